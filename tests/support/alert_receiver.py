"""A real HTTP receiver of alert posts on 127.0.0.1, which can fail, hang and recover.

Runs the standard library's threaded HTTP server in a thread of the test
process. It keeps, in order, only the posts it answered with 204: a post it
failed (500) or hung (held, then closed unanswered) is counted in `attempts`
but never in `posts`, so "each alert posted once" is `posts` without repeats;
so is one it rejected (404), recorded in `rejected`.
"""

import dataclasses
import http.server
import json
import threading
import time
import uuid
from typing import List, Optional

OK, FAIL, HANG, REJECT = "ok", "fail", "hang", "reject"


@dataclasses.dataclass
class Received:
    """One post answered 2xx: its alert id header, path and JSON body."""

    alert_id: Optional[str]
    path: str
    body: dict


class AlertReceiver:
    """Start with `start()`, stop with `stop()`; `url` is the webhook to give
    the server, its path a secret the server's logs must not show."""

    def __init__(self):
        self.secret = f"SECRET{uuid.uuid4().hex}"
        self.posts: List[Received] = []
        self.rejected: List[Received] = []
        self.attempts = 0
        self.hung = 0  # requests held in HANG mode so far
        self._mode = OK
        self._changed = threading.Condition()
        self._release = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/{self.secret}"

    def start(self) -> "AlertReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def fail(self) -> None:
        """Answer 500 from now on."""
        self._set(FAIL)

    def reject(self) -> None:
        """Answer 404 from now on, as Slack does for a deleted webhook."""
        self._set(REJECT)

    def hang(self) -> None:
        """Hold every request from now on, unanswered until `recover`."""
        self._release.clear()
        self._set(HANG)

    def recover(self) -> None:
        """Answer 204 from now on; the held requests are closed unanswered."""
        self._set(OK)
        self._release.set()

    def wait_for_posts(self, count: int, timeout: float = 30.0) -> List[Received]:
        """The posts answered 2xx once there are at least `count`; fails after `timeout`."""
        return self._wait(lambda: len(self.posts) >= count, timeout,
                          f"{count} posts") and list(self.posts)

    def wait_until_hung(self, count: int = 1, timeout: float = 30.0) -> None:
        """Return once `count` requests in all have been held in HANG mode."""
        self._wait(lambda: self.hung >= count, timeout, f"{count} hung requests")

    def wait_for_attempts(self, count: int, timeout: float = 30.0) -> None:
        self._wait(lambda: self.attempts >= count, timeout, f"{count} attempts")

    def _wait(self, done, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the receiver got no {what} within {timeout} s: "
                                         f"{self.attempts} attempts, {len(self.posts)} posts")
                self._changed.wait(remaining)
        return True

    def _set(self, mode: str) -> None:
        with self._changed:
            self._mode = mode

    def _handler(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                payload = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._changed:
                    receiver.attempts += 1
                    mode = receiver._mode
                    if mode == HANG:
                        receiver.hung += 1
                    receiver._changed.notify_all()
                if mode == HANG:
                    receiver._release.wait()
                    self.close_connection = True  # closed without an answer
                    return
                if mode in (FAIL, REJECT):
                    self.send_response(500 if mode == FAIL else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    if mode == FAIL:
                        return
                else:
                    self.send_response(204)
                    self.end_headers()
                received = Received(self.headers.get("X-Notify-Alert-Id"), self.path,
                                    json.loads(payload))
                with receiver._changed:
                    (receiver.posts if mode == OK else receiver.rejected).append(received)
                    receiver._changed.notify_all()

            def log_message(self, format, *args):
                pass

        return Handler
