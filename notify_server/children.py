"""Child processes the server starts (embedded Redis, demo worker and producer).

Each runs in its own session, so a Ctrl-C in the terminal reaches only the
server, which then stops them in order (workers before the Redis they write
to). On Linux each also gets SIGTERM if the server dies without stopping it
(even by SIGKILL), so none is left behind: `terminate_with_parent`, which the
Celery helper processes call too (`celery_io.helper_process`).
"""

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from typing import List, Optional

PR_SET_PDEATHSIG = 1


def terminate_with_parent(parent: Optional[int] = None) -> None:
    """Ask Linux for SIGTERM when the parent dies (for a child that runs Python itself).

    `parent` is the parent's pid as the child learned it: when that process
    is no longer the parent (it died before this call), SIGTERM comes at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def start(argv: List[str], **popen_args) -> subprocess.Popen:
    """`subprocess.Popen(argv, ...)` in a new session, tied to this process's life.

    Call it from a thread that lives as long as the server (the main thread):
    Linux sends the signal when the thread that started the child exits."""
    hook = terminate_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=hook, **popen_args)
