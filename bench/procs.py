"""Child processes of a benchmark run: started, measured, stopped by PID.

Every child the run starts is registered here and `stop_all` ends exactly
those (SIGTERM, then SIGKILL after a grace period), whatever happened.
"""

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional

import psutil

_STARTED: List["Child"] = []


class Child:
    """A child process writing its output to `log_path`.

    `cpu_seconds()` and `rss()` read the process itself (not its children),
    which is what is wanted for a server: its own work, not a helper's.
    """

    def __init__(self, name: str, argv: List[str], *, log_dir: Path, cwd: Path,
                 env: Optional[Dict[str, str]] = None, stdin=subprocess.DEVNULL,
                 stdout=None, cpus: Optional[set] = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdin=stdin, stdout=stdout if stdout is not None else log, stderr=log)
        log.close()
        self.pid = self.process.pid
        self.ps = psutil.Process(self.pid)
        if cpus:
            os.sched_setaffinity(self.pid, cpus)
        _STARTED.append(self)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def children_cpu_seconds(self) -> float:
        """CPU seconds of the processes it started that are still running
        (e.g. a server's inspect worker); exited ones are not counted."""
        total = 0.0
        for child in self.ps.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> Optional[int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in _STARTED:
            _STARTED.remove(self)
        return self.process.returncode


async def serve_commands(handle: Callable[[dict], Awaitable[dict]]) -> None:
    """The child side of `RpcChild`: say ready, then answer one JSON command per
    stdin line with `handle(command)`'s result (or its error), until EOF or
    ``{"cmd": "exit"}``."""
    loop = asyncio.get_running_loop()
    reply({"ready": True})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        if command.get("cmd") == "exit":
            return
        try:
            result = await handle(command)
        except Exception as exc:  # report to the orchestrator instead of dying
            result = {"error": f"{type(exc).__name__}: {exc}"}
        reply(result)


def reply(message: dict) -> None:
    """The child side of `RpcChild`: one JSON reply per line on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class RpcChild(Child):
    """A child driven by JSON lines on stdin/stdout (the load client, the publisher)."""

    def __init__(self, name: str, argv: List[str], **kwargs):
        super().__init__(name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)
        self._replies: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.receive(timeout=60)  # its {"ready": true}

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._replies.put(line.decode())
        self._replies.put(None)

    def receive(self, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no reply within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited ({self.process.wait()}); log:\n{self.log_tail()}")
        return json.loads(line)

    def call(self, command: str, timeout: float, **arguments) -> dict:
        self.process.stdin.write((json.dumps({"cmd": command, **arguments}) + "\n").encode())
        self.process.stdin.flush()
        reply = self.receive(timeout)
        if "error" in reply:
            raise RuntimeError(f"{self.name} {command}: {reply['error']}")
        return reply

    def stop(self, grace: float = 10.0) -> Optional[int]:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(b'{"cmd": "exit"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        return super().stop(grace)


def stop_all() -> None:
    """Stop every child this run started and has not stopped yet, newest first."""
    for child in reversed(list(_STARTED)):
        child.stop(grace=5.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(child: Child, port: int, timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:`port` accepts; raise if `child` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}); "
                               f"log:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not listen on {port} within {timeout} s; "
                                   f"log:\n{child.log_tail()}")
            time.sleep(0.1)
