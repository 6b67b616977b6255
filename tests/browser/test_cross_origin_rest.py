"""`GET /api/tasks/queue/status` from a page of another origin, in a real Chromium.

The page comes from a static file server on its own loopback port, so every
request it makes to a notify server is cross-origin. Three servers differ only
in NOTIFY_ALLOWED_ORIGINS: unset (any origin), a list holding the page's
origin, and a list holding only some other origin. Plain HTTP requests with an
`Origin` header check the headers that a browser keeps from the page.
"""

import json
import re
import uuid

import pytest

from tests.support.http_probe import request, wait_for_first_poll
from tests.support.processes import start_server
from tests.support.static_site import serve_directory

PATH = "/api/tasks/queue/status"
QUEUE_KEYS = {"active_tasks", "scheduled_tasks", "reserved_tasks", "workers", "stale"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The origin of a blank page served from another port, e.g. http://127.0.0.1:41234."""
    root = tmp_path_factory.mktemp("other-origin")
    (root / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><link rel=icon href='data:,'>"
        "<title>another origin</title>", encoding="utf-8")
    with serve_directory(root) as origin:
        yield origin


@pytest.fixture(scope="module")
def servers(redis_server, worker, site):
    """(child, port) by name: "any" allows every origin (the default),
    "listed" lists the page's origin, "refusing" lists only another one.
    Each has finished its first inspect poll, so the REST answer is 200."""
    allowed_origins = {"any": None,
                       "listed": f"http://localhost:5173,{site}",
                       "refusing": "http://localhost:5173"}
    started = {}
    try:
        for name, origins in allowed_origins.items():
            env = {} if origins is None else {"NOTIFY_ALLOWED_ORIGINS": origins}
            started[name] = start_server(redis_server.url, env=env, name=f"cors-{name}")
        for _, port in started.values():
            wait_for_first_poll(port)
        yield started
    finally:
        for child, _ in started.values():
            child.stop()


def tokens(header_value) -> set:
    return {token.strip().lower() for token in (header_value or "").split(",") if token.strip()}


def access_control_headers(response) -> list:
    return [(name, value) for name, value in response.getheaders()
            if name.lower().startswith("access-control-")]


def answered(child, method: str, status: int, path: str) -> None:
    """Fails unless the server's access log has `status method path` (for
    requests a page cannot see the answer to)."""
    child.wait_for_line(rf"tornado\.access: {status} {method} {re.escape(path)} ", timeout=5)


@pytest.fixture
def console_errors(page):
    errors = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    return errors


@pytest.fixture
def other_origin_page(page, site, console_errors):
    page.goto(f"{site}/")
    return page


def fetch_from_page(page, url: str, headers=None) -> dict:
    """`fetch(url)` run by the page: {status, body} or {error: "Name: message"}."""
    return page.evaluate("""async ([url, headers]) => {
        try {
            const response = await fetch(url, { headers });
            return { status: response.status, body: await response.json() };
        } catch (error) {
            return { error: `${error.name}: ${error.message}` };
        }
    }""", [url, headers or {}])


def assert_success_envelope(envelope: dict) -> None:
    assert envelope["code"] == 200
    assert envelope["message"] == "success"
    assert QUEUE_KEYS <= set(envelope["data"])


@pytest.mark.parametrize("allowing", ["any", "listed"])
def test_page_of_an_allowed_origin_reads_the_queue_status_envelope(
        other_origin_page, servers, console_errors, allowing):
    _, port = servers[allowing]

    result = fetch_from_page(other_origin_page, f"http://127.0.0.1:{port}{PATH}")

    assert "error" not in result, f"the page's fetch failed: {result['error']}"
    assert result["status"] == 200
    assert_success_envelope(result["body"])
    assert console_errors == []


@pytest.mark.parametrize("allowing", ["any", "listed"])
def test_page_of_an_allowed_origin_passes_the_preflight_of_an_authorized_json_request(
        other_origin_page, servers, console_errors, allowing):
    child, port = servers[allowing]
    path = f"{PATH}?probe={uuid.uuid4().hex}"

    result = fetch_from_page(other_origin_page, f"http://127.0.0.1:{port}{path}",
                             {"Authorization": "Bearer x", "Content-Type": "application/json"})

    assert "error" not in result, f"the page's fetch failed: {result['error']}"
    assert result["status"] == 200
    assert_success_envelope(result["body"])
    answered(child, "OPTIONS", 204, path)
    assert console_errors == []


def test_page_of_a_refused_origin_cannot_read_the_answer_the_server_still_sends(
        other_origin_page, servers, console_errors):
    child, port = servers["refusing"]
    path = f"{PATH}?probe={uuid.uuid4().hex}"

    result = fetch_from_page(other_origin_page, f"http://127.0.0.1:{port}{path}")

    assert result == {"error": "TypeError: Failed to fetch"}
    answered(child, "GET", 200, path)
    assert any("No 'Access-Control-Allow-Origin' header" in text for text in console_errors), \
        f"Chromium did not block the answer for want of CORS headers: {console_errors}"


@pytest.mark.parametrize("allowing", ["any", "listed"])
def test_get_from_an_allowed_origin_names_that_origin_and_varies_on_it(servers, site, allowing):
    _, port = servers[allowing]

    response = request(port, "GET", PATH, {"Origin": site})

    assert response.status == 200
    assert response.getheader("Access-Control-Allow-Origin") == site
    assert "origin" in tokens(response.getheader("Vary"))
    assert_success_envelope(json.loads(response.body))


@pytest.mark.parametrize("allowing", ["any", "listed"])
def test_preflight_from_an_allowed_origin_is_204_with_methods_headers_and_max_age(
        servers, site, allowing):
    _, port = servers[allowing]

    response = request(port, "OPTIONS", PATH, {
        "Origin": site, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,content-type"})

    assert response.status == 204
    assert response.getheader("Access-Control-Allow-Origin") == site
    assert "get" in tokens(response.getheader("Access-Control-Allow-Methods"))
    assert {"authorization", "content-type"} <= tokens(
        response.getheader("Access-Control-Allow-Headers"))
    assert int(response.getheader("Access-Control-Max-Age") or 0) > 0
    assert response.body == b""


def test_get_from_a_refused_origin_is_answered_without_cors_headers(servers, site):
    _, port = servers["refusing"]

    response = request(port, "GET", PATH, {"Origin": site})

    assert response.status == 200
    assert access_control_headers(response) == []
    assert_success_envelope(json.loads(response.body))
