"""Pure checks of bench/soak.py: did a resuming client get its subject's events once and in order?

No I/O, no third-party imports (unit-tested in tests/unit/test_soak_check.py).

A resuming client's log is the list of what it received, in arrival order, over all its
reconnects: stream ids (strings, "<ms>-<seq>") of the events of the subject it follows, and
`RESYNC` where a `resync` arrived. The expected events are the ids the history stream held
for that subject (read by the soak while the run went on), in stream order.
"""

from typing import Dict, List, Sequence, Tuple

RESYNC = "resync"


def stream_key(event_id: str) -> Tuple[int, int]:
    """A stream id as a comparable pair: "1700000000000-3" -> (1700000000000, 3)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def check_follower(log: Sequence[str], expected: Sequence[str]) -> Dict[str, object]:
    """What one resuming client's `log` shows against the `expected` ids.

    - `duplicates`: ids received more than once; `out_of_order`: ids received after a
      larger one (the two must be 0: once and in order, across reconnects and resyncs);
    - `missing`: expected ids after the client's first event and up to the last expected
      one that it never received, outside a resync gap (must be 0);
    - `lost_to_resync`: expected ids it never received inside a resync gap (between the
      last event before a `resync` and the first one after it): continuity a `resync`
      announced as lost;
    - `unexpected`: received ids the expected list does not hold (must be 0);
    - `received`, `resyncs`: counts.
    """
    seen: set = set()
    duplicates = out_of_order = resyncs = 0
    last = None
    gaps: List[Tuple[Tuple[int, int], Tuple[int, int]]] = []
    gap_open_at = None
    received: List[str] = []
    for entry in log:
        if entry == RESYNC:
            resyncs += 1
            if gap_open_at is None:
                gap_open_at = last if last is not None else (-1, -1)
            continue
        key = stream_key(entry)
        if entry in seen:
            duplicates += 1
            continue
        seen.add(entry)
        received.append(entry)
        if last is not None and key < last:
            out_of_order += 1
        else:
            last = key
        if gap_open_at is not None:
            gaps.append((gap_open_at, key))
            gap_open_at = None
    if gap_open_at is not None:  # a resync with nothing after it: the rest is lost to it
        gaps.append((gap_open_at, (2 ** 63, 0)))
    missing = lost = 0
    if received:
        first = min(stream_key(entry) for entry in received)
        for entry in expected:
            key = stream_key(entry)
            if key < first or entry in seen:
                continue
            if any(low < key < high for low, high in gaps):
                lost += 1
            else:
                missing += 1
    expected_set = set(expected)
    return {"received": len(received), "duplicates": duplicates, "out_of_order": out_of_order,
            "missing": missing, "lost_to_resync": lost, "resyncs": resyncs,
            "unexpected": sum(1 for entry in received if entry not in expected_set)}


def follower_ok(result: Dict[str, object]) -> bool:
    """Once, in order, nothing missing outside a resync gap, nothing unknown."""
    return (result["received"] > 0 and result["duplicates"] == 0 and result["out_of_order"] == 0
            and result["missing"] == 0 and result["unexpected"] == 0)
