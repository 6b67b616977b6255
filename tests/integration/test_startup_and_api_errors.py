"""What a person sees when the server cannot start, and what an API client
sees for a path or method that does not exist."""

import json
import socket
import subprocess
import sys

from tornado.httpclient import AsyncHTTPClient

from tests.support.processes import ROOT


def run_server(*flags: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_port_in_use_is_one_line_naming_the_address_and_exit_code_2(redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server("--host", "127.0.0.1", "--port", str(port),
                            env={"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"run.py: error: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another notify-server?); stop that process or choose another port with --port or "
        "NOTIFY_PORT"]
    assert "Traceback" not in result.stdout


def test_a_setting_that_is_not_allowed_is_one_line_and_exit_code_2(redis_server):
    for name, value, rule in [("NOTIFY_PORT", "eighty", "must be an integer from 0 to 65535"),
                              ("NOTIFY_PING_TIMEOUT", "-3", "must be a number of seconds"),
                              ("NOTIFY_MAX_CLIENT_BUFFER", "-1", "must be a whole number")]:
        result = run_server(env={"REDIS_URL": redis_server.url, name: value})

        assert result.returncode == 2, result
        [line] = result.stderr.splitlines()
        assert line.startswith(f"run.py: error: {name}={value!r}: {rule}"), line
        assert "listening" not in result.stdout


async def fetch(port: int, path: str, **options):
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}",
                                             raise_error=False, **options)
    return response.code, response.headers, json.loads(response.body)


async def test_api_errors_answer_the_json_envelope_not_an_html_page(server_port):
    code, headers, body = await fetch(server_port, "/api/nothing/here")
    assert (code, body) == (404, {"code": 404, "message": "not found", "data": None})
    assert headers["Content-Type"].startswith("application/json")

    code, _, body = await fetch(server_port, "/api/tasks/queue/status", method="POST",
                                body=b"{}")
    assert (code, body) == (405, {"code": 405, "message": "method not allowed", "data": None})


async def test_a_cross_origin_get_is_answered_with_cors_headers(server_port):
    code, headers, body = await fetch(server_port, "/api/tasks/queue/status",
                                      headers={"Origin": "http://localhost:5173"})

    assert code in (200, 503) and body["code"] == code
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "Origin" in headers["Vary"]


def test_readyz_answering_503_before_the_first_poll_is_logged_as_a_warning(make_redis):
    from tests.support.http_probe import get
    from tests.support.processes import start_server

    # A broker nothing listens on, and a Redis of its own (no other process's
    # snapshot to adopt): the server starts, and /readyz stays 503.
    child, port = start_server(make_redis().url,
                               env={"CELERY_BROKER_URL": "redis://127.0.0.1:9/0"})
    try:
        assert get(port, "/readyz").status == 503
        assert get(port, "/healthz").status == 200
        child.wait_for_line(r"200 GET /healthz")  # the marker: the /readyz line came first
        lines = [line for line in child.output if "GET /readyz" in line]
        assert len(lines) == 1 and " WARNING " in lines[0] and " ERROR " not in lines[0], lines
    finally:
        child.stop()


def test_ctrl_c_during_start_up_is_one_line_and_exit_code_130():
    import os
    import signal

    # Redis unreachable: start-up waits for the subscription, before the signal handlers exist.
    process = subprocess.Popen(
        [sys.executable, "run.py", "--host", "127.0.0.1", "--port", "0"], cwd=ROOT,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = []
        for line in process.stdout:
            output.append(line)
            if "events subscription lost" in line:
                break
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole process group
        output.append(process.stdout.read())
        assert process.wait(timeout=20) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(output)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.rstrip().splitlines()[-1] == "notify-server: interrupted during start-up"


def _sigint_caught(pid: int) -> bool:
    """Whether the process has a SIGINT handler (Python's own, set as its interpreter starts)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & (1 << (2 - 1)))


def test_ctrl_c_while_the_imports_load_is_the_same_one_line_and_exit_code_130():
    import os
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "run.py", "--host", "127.0.0.1", "--port", "0"], cwd=ROOT,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:9/0", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        while not _sigint_caught(process.pid):  # the interpreter is up, run.py starts
            time.sleep(0.005)
        # Then a moment into run.py's imports (about a second here; nothing to
        # wait for in between): before the fix a KeyboardInterrupt traceback.
        time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        text, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, text
    assert text.strip() == "notify-server: interrupted during start-up", text


async def test_readyz_in_token_mode_names_only_the_kind_of_a_stale_reason(make_redis):
    import json as json_module

    from tests.support.http_probe import get
    from tests.support.processes import start_server
    from tests.support.tokens import SECRET
    from tests.support.waiting import eventually

    # A Redis of its own: this server leads, and its polls fail.
    child, port = start_server(make_redis().url, env={
        "CELERY_BROKER_URL": "redis://127.0.0.1:9/0", "NOTIFY_AUTH_SECRET": SECRET,
        "NOTIFY_METRICS_TOKEN": "operator-token"})

    async def as_operator():
        return json_module.loads(get(port, "/readyz", {
            "Authorization": "Bearer operator-token"}).body)
    try:
        # Until the failed first poll's snapshot came back through Redis.
        operator = await eventually(as_operator, lambda health: "broker unreachable" in (
            health["queue_stale_reason"] or ""))
        anyone = json_module.loads(get(port, "/readyz").body)
        wrong = json_module.loads(get(port, "/readyz", {"Authorization": "Bearer guess"}).body)
    finally:
        child.stop()
    assert anyone["queue_stale_reason"] == wrong["queue_stale_reason"] == "broker unreachable"
    assert "127.0.0.1:9" in operator["queue_stale_reason"]
    assert "127.0.0.1:9" not in json_module.dumps(anyone)
    assert anyone["celery_events"] is None  # NOTIFY_CELERY_EVENTS is off
