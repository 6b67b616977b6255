"""Real child processes for the integration tests: started, watched, stopped.

Every process writes its output to a log file under test-artifacts/ (kept for
CI) and to a line queue that tests wait on instead of sleeping.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


# Every child started, so a session finaliser can stop those a failed test left running.
STARTED: List["Child"] = []


class Child:
    """A child process whose combined output can be awaited line by line."""

    def __init__(self, name: str, argv: List[str], env: Optional[dict] = None):
        ARTIFACTS.mkdir(exist_ok=True)
        self.name = name
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.output: List[str] = []
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, bufsize=1)
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        STARTED.append(self)

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.output.append(line)
                self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Block until an output line matches `pattern`; fails loudly otherwise."""
        regex = re.compile(pattern)
        for line in self.output:
            match = regex.search(line)
            if match:
                return match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no line matching {pattern!r} within "
                                     f"{timeout} s; log: {self.log_path}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{self.name} exited ({self.process.wait()}) before "
                                     f"printing {pattern!r}; log: {self.log_path}")
            match = regex.search(line)
            if match:
                return match

    def wait_for_lines(self, pattern: str, count: int, timeout: float = 30.0) -> None:
        """Block until `count` output lines in all have matched `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while sum(1 for line in list(self.output) if regex.search(line)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: fewer than {count} lines matching "
                                     f"{pattern!r} within {timeout} s; log: {self.log_path}")
            try:
                if self._lines.get(timeout=remaining) is None:
                    raise AssertionError(f"{self.name} exited ({self.process.wait()}) before "
                                         f"{count} lines matched {pattern!r}")
            except queue.Empty:
                continue

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._pump.join(timeout=5)
        return self.process.returncode


def start_server(redis_url: Optional[str], *extra: str, env: Optional[dict] = None,
                 name: str = "server") -> "tuple[Child, int]":
    """Start `python run.py` on 127.0.0.1 with an ephemeral port; returns (child, port)."""
    server_env = {"NOTIFY_POLL_INTERVAL": "0.5", "NOTIFY_LOG_LEVEL": "INFO", **(env or {})}
    if redis_url:
        server_env["REDIS_URL"] = redis_url
    else:
        server_env["REDIS_URL"] = ""
    child = Child(name, [sys.executable, "run.py", "--host", "127.0.0.1", "--port", "0", *extra],
                  env=server_env)
    try:
        port = int(child.wait_for_line(r"listening on http://[^:]+:(\d+)").group(1))
    except BaseException:
        child.stop()
        raise
    return child, port


def start_worker(redis_url: str, hostname: str, concurrency: int = 2,
                 env: Optional[dict] = None, queues: Sequence[str] = (),
                 app: str = "notify_server.dev.demo", args: Sequence[str] = ()) -> Child:
    """Start `celery -A <app> worker` (prefork; the demo app by default) and
    wait until it is ready; it consumes `queues` (`-Q`), else Celery's default
    queue, and gets any extra `args` (such as -E)."""
    child = Child(f"worker-{hostname.split('@')[0]}",
                  [sys.executable, "-m", "celery", "-A", app, "worker",
                   "--loglevel", "INFO", "--concurrency", str(concurrency),
                   "--hostname", hostname, "--without-gossip", "--without-mingle",
                   *(["--queues", ",".join(queues)] if queues else []), *args],
                  env={"REDIS_URL": redis_url, **(env or {})})
    try:
        child.wait_for_line(r"ready\.", timeout=60)
    except BaseException:
        child.stop()
        raise
    return child


def stop_all_started() -> None:
    """Stop every child still running (a failed test's leftovers)."""
    for child in STARTED:
        child.stop()
