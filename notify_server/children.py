"""Child processes the server starts (embedded Redis, demo worker and producer).

Each runs in its own session, so a Ctrl-C in the terminal reaches only the
server, which then stops them in order (workers before the Redis they write
to). On Linux each also gets SIGTERM if the server dies without stopping it
(even by SIGKILL), so none is left behind.
"""

import ctypes
import ctypes.util
import signal
import subprocess
import sys
from typing import List

PR_SET_PDEATHSIG = 1


def terminate_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (for a child that runs Python itself)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(argv: List[str], **popen_args) -> subprocess.Popen:
    """`subprocess.Popen(argv, ...)` in a new session, tied to this process's life.

    Call it from a thread that lives as long as the server (the main thread):
    Linux sends the signal when the thread that started the child exits."""
    hook = terminate_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=hook, **popen_args)
