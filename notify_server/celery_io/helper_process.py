"""Starting a helper process: the inspect poller's and the event bridge's.

Called in the server process. kombu and Celery do enough pure-Python work
that a thread would hold the server's GIL for milliseconds at a time and
delay every broadcast on the event loop: their calls run in helper
processes instead, spawned (not forked: the server process has threads and
an event loop). Every helper, before its own work:

- ignores SIGINT: a Ctrl-C reaches the whole process group, and the server
  stops its helpers itself;
- dies with the server, even one killed with SIGKILL
  (`children.terminate_with_parent`);
- logs at the level the server's root logger had when it was started.

Start helpers from the event-loop thread: Linux ties the "parent died"
signal to the thread that started the process.
"""

import concurrent.futures
import logging
import multiprocessing
import multiprocessing.process
import signal
from typing import Any, Callable

from notify_server import children

SPAWN = multiprocessing.get_context("spawn")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def helper_pool(initializer: Callable[..., None],
                *args: Any) -> concurrent.futures.ProcessPoolExecutor:
    """An executor of one helper process, which runs `initializer(*args)`
    first. The process starts with the first call submitted."""
    return concurrent.futures.ProcessPoolExecutor(
        1, mp_context=SPAWN, initializer=_enter, initargs=(_log_level(), initializer, args))


def helper_process(main: Callable[..., None], *args: Any,
                   name: str) -> multiprocessing.process.BaseProcess:
    """A daemonic helper process, not started yet, that runs `main(*args)`."""
    return SPAWN.Process(target=_enter, args=(_log_level(), main, args), name=name, daemon=True)


def _log_level() -> int:
    return logging.getLogger().getEffectiveLevel()


def _enter(log_level: int, main: Callable[..., None], args: tuple) -> None:
    """Runs in the helper process: the common setup, then `main(*args)`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children.terminate_with_parent(multiprocessing.parent_process().pid)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    main(*args)
