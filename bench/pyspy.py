"""py-spy profiles of a benchmark's process: recorded as raw (collapsed) stacks, summed up as text.

`Recording` attaches py-spy to a running process by PID and stops it (SIGINT,
so that it writes its file) by PID. `summarise` reads the collapsed format,
one stack per line, root first and leaf last, then the sample count::

    main (run.py:12);handle (server.py:40);encode (json.py:7) 23

and returns the frames with the most samples of their own (the leaf of a
stack) and in total (anywhere on a stack, once per stack). The trunk, the
frames on nearly every stack (a process's start-up and main loop), would
fill the total list and say nothing: it is left out and counted.
"""

import collections
import signal
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from bench.procs import Child

PY_SPY = Path(__file__).resolve().parent / ".venv" / "bin" / "py-spy"


class Recording:
    """py-spy sampling process `pid` into `out` until `stop`.

    Samples by function (`--function`), without pausing the target
    (`--nonblocking`: the figures of the run being profiled move less), at
    `rate` samples per second; idle threads are left out (py-spy's default).
    """

    def __init__(self, pid: int, out: Path, *, log_dir: Path, name: str, rate: int = 200):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.child = Child(name, [str(PY_SPY), "record", "-f", "raw", "--function",
                                  "--nonblocking", "-r", str(rate), "-o", str(out),
                                  "-p", str(pid)],
                           log_dir=log_dir, cwd=out.parent)

    def stop(self, timeout: float = 20.0) -> Optional[Path]:
        """End the recording; returns the file, or None if py-spy wrote none."""
        if self.child.alive():
            self.child.process.send_signal(signal.SIGINT)
            try:
                self.child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.child.stop(grace=5.0)
        return self.out if self.out.exists() else None


def parse(lines: Iterable[str]) -> List[tuple]:
    """(frames root first, samples) of each line of collapsed stacks."""
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(paths: Iterable[Path], own: int = 15, total: int = 10,
              trunk: float = 0.95) -> dict:
    """The top `own` frames by own samples and the top `total` by total
    samples, over every file in `paths` (e.g. the two pool children of one
    worker), with their share of all samples. Frames on at least `trunk` of
    all samples are not ranked by total; `trunk_frames` says how many."""
    own_samples: Dict[str, int] = collections.Counter()
    total_samples: Dict[str, int] = collections.Counter()
    samples = 0
    for path in paths:
        for frames, count in parse(Path(path).read_text(errors="replace").splitlines()):
            samples += count
            own_samples[frames[-1]] += count
            for frame in set(frames):
                total_samples[frame] += count

    trunk_frames = {frame for frame, count in total_samples.items() if count >= trunk * samples}
    for frame in trunk_frames:
        del total_samples[frame]

    def top(counter, n):
        return [{"frame": frame, "samples": count,
                 "share": round(count / samples, 4) if samples else None}
                for frame, count in counter.most_common(n)]
    return {"samples": samples, "own": top(own_samples, own), "total": top(total_samples, total),
            "trunk": trunk, "trunk_frames": len(trunk_frames)}


def format_summary(summary: dict, title: str) -> str:
    """The summary as plain text: two ranked lists."""
    lines = [f"{title}: {summary['samples']:,} samples"]
    trunk = (f"by total samples, without the {summary['trunk_frames']} frames on "
             f">= {summary['trunk'] * 100:.0f} % of them")
    for key, label in (("own", "by own samples"), ("total", trunk)):
        lines.append(f"  top {len(summary[key])} {label}:")
        for rank, row in enumerate(summary[key], 1):
            lines.append(f"    {rank:2}. {row['share'] * 100:5.1f} %  {row['samples']:6,}  "
                         f"{row['frame']}")
    return "\n".join(lines)
