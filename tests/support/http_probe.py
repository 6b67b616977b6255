"""What a test asks a running server over plain HTTP: JSON answers, /readyz,
the samples of /metrics, and waiting until it serves a queue snapshot."""

import http.client
import json
import time
from typing import Any, Dict, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

QUEUE_STATUS_PATH = "/api/tasks/queue/status"

# A /metrics sample by name and sorted labels: ("notify_messages_sent_total", (("type", "pong"),)).
SampleKey = Tuple[str, Tuple[Tuple[str, str], ...]]


def request(port: int, method: str, path: str,
            headers: Optional[Dict[str, str]] = None) -> http.client.HTTPResponse:
    """One blocking request to 127.0.0.1:`port`, as curl would send it; the
    response has its body read into `.body`. A server that closes the
    connection without answering raises here."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        response.body = response.read()
    finally:
        connection.close()
    return response


def get(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> http.client.HTTPResponse:
    return request(port, "GET", path, headers)


def wait_for_first_poll(port: int, timeout: float = 20.0) -> None:
    """Until the server's REST queue status answers 200 (asked without an
    Origin header or a token): it holds a queue snapshot, its first inspect
    poll's or the one the poller lease holder shared. A deadline poll, as
    nothing is pushed to a client that has no socket."""
    deadline = time.monotonic() + timeout
    while get(port, QUEUE_STATUS_PATH).status != 200:
        assert time.monotonic() < deadline, f"server on {port}: no inspect poll within {timeout} s"
        time.sleep(0.05)


def wait_for_bridge(port: int, timeout: float = 30.0) -> None:
    """Until /readyz says the Celery event bridge's helper consumes Celery's
    events: tasks sent before that may not be bridged (events are fanned out
    to the consumers bound at the time). A deadline poll, like the one above."""
    deadline = time.monotonic() + timeout
    while json.loads(get(port, "/readyz").body).get("celery_events") is not True:
        assert time.monotonic() < deadline, f"server on {port}: no bridge within {timeout} s"
        time.sleep(0.05)


async def get_json(port: int, path: str, request_timeout: float = 20.0) -> Tuple[int, Any]:
    """GET `path`, whatever the status: (status, the JSON body)."""
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", raise_error=False,
                                             request_timeout=request_timeout)
    return response.code, json.loads(response.body)


async def readyz(port: int, request_timeout: float = 20.0) -> Tuple[int, dict]:
    """/readyz: (200 or 503, its body)."""
    return await get_json(port, "/readyz", request_timeout)


async def scrape(port: int) -> Dict[SampleKey, float]:
    """Every sample of /metrics (asked without a token), in Prometheus text format."""
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.body.decode())
            for sample in family.samples}
