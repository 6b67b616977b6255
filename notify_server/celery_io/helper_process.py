"""Starting a helper process: the inspect poller's and the event bridge's.

Called in the server process. kombu and Celery do enough pure-Python work
that a thread would hold the server's GIL for milliseconds at a time and
delay every broadcast on the event loop: their calls run in helper
processes instead, spawned (not forked: the server process has threads and
an event loop). Every helper, before its own work:

- ignores SIGINT: a Ctrl-C reaches the whole process group, and the server
  stops its helpers itself. It is spawned with SIGINT blocked, so a Ctrl-C
  while its interpreter is still starting (before it can ignore the signal)
  prints no traceback either;
- dies with the server, even one killed with SIGKILL
  (`children.terminate_with_parent`);
- logs at the level the server's root logger had when it was started.

Start helpers from the event-loop thread: Linux ties the "parent died"
signal to the thread that started the process.
"""

import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import signal
from typing import Any, Callable

from notify_server import children

SPAWN = multiprocessing.get_context("spawn")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def helper_pool(initializer: Callable[..., None], *args: Any) -> "_HelperPool":
    """An executor of one helper process, which runs `initializer(*args)`
    first. The process starts with the first call submitted; `stop()` ends it."""
    return _HelperPool(1, mp_context=SPAWN, initializer=_enter,
                       initargs=(_log_level(), initializer, args))


def helper_process(main: Callable[..., None], *args: Any,
                   name: str) -> multiprocessing.process.BaseProcess:
    """A daemonic helper process, not started yet, that runs `main(*args)`."""
    return _HelperProcess(target=_enter, args=(_log_level(), main, args), name=name, daemon=True)


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread: a process spawned meanwhile inherits the mask."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _HelperPool(concurrent.futures.ProcessPoolExecutor):
    # The pool spawns its process in the first `submit` (and again after a crash).
    def submit(self, *args, **kwargs):
        with _sigint_blocked():
            return super().submit(*args, **kwargs)

    def stop(self) -> None:
        """SIGTERM the helper, then shut down: a call in flight (an inspect
        poll waits up to its timeout) is abandoned, so neither the server's
        exit nor Python's at-exit join waits for it. Blocks until the pool's
        manager thread has seen the helper go (a few ms): left running, it
        would race Python's at-exit wake-up of it (EBADF)."""
        for process in list((getattr(self, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
        self.shutdown(wait=True, cancel_futures=True)


class _HelperProcess(SPAWN.Process):
    def start(self) -> None:
        with _sigint_blocked():
            super().start()


def _log_level() -> int:
    return logging.getLogger().getEffectiveLevel()


def _enter(log_level: int, main: Callable[..., None], args: tuple) -> None:
    """Runs in the helper process: the common setup, then `main(*args)`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one is now ignored
    children.terminate_with_parent(multiprocessing.parent_process().pid)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    main(*args)
