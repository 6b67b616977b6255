"""Run a server script under tracemalloc; SIGUSR1 writes a snapshot.

    python bench/traced_run.py SCRIPT [ARGS...]

Used by `bench.memory --trace` so that any tree's `run.py` (an older
commit's too, which has no such hook) can be traced unchanged. The script
runs as `__main__` with its own directory first on sys.path, as if started
directly. On SIGUSR1 the traced allocations (TRACED_FRAMES frames each) are
written to the path in $TRACED_SNAPSHOT (written to a temporary name, then
renamed, so a reader never sees half a file).
"""

import os
import runpy
import signal
import sys
import tracemalloc

TRACED_FRAMES = 25


def dump(_signum, _frame) -> None:
    path = os.environ["TRACED_SNAPSHOT"]
    tracemalloc.take_snapshot().dump(path + ".part")
    os.replace(path + ".part", path)


def main() -> None:
    script = os.path.abspath(sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(script)
    tracemalloc.start(TRACED_FRAMES)
    signal.signal(signal.SIGUSR1, dump)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
