"""What one Celery inspect poll means for the queue lists: the poller's rules.

Pure: no Celery, kombu, Tornado or Redis imports. The poller (the adapter) runs
the three inspect calls (`active`, `scheduled`, `reserved`) and hands this
module either their replies or the exception they raised; it applies the
answer and does the logging.
"""

from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple, Type

from notify_server.queue.replies import Replies

NO_WORKER = "no Celery worker answered the inspect poll"
HALF_ANSWERED = "a worker answered only part of the inspect poll"


@dataclass(frozen=True)
class Verdict:
    """What to do with the replies of one poll.

    `stale_reason` set: the poll failed; keep the last lists, marked stale.
    `poll_again` set: the poll proves nothing; change nothing, poll again now.
    Neither (`publish`): the replies are the new lists.
    `ask` are the workers the next poll names; `partial` the workers that
    answered only some of this poll's calls, to pass to the next `judge`.
    """

    stale_reason: Optional[str] = None
    poll_again: bool = False
    ask: FrozenSet[str] = frozenset()
    partial: FrozenSet[str] = frozenset()

    @property
    def publish(self) -> bool:
        return self.stale_reason is None and not self.poll_again


def judge(replies: Sequence[Replies], partial_before: FrozenSet[str]) -> Verdict:
    """Judge one poll's replies, given the workers that answered only part of
    the poll before (`Verdict.partial` of the previous verdict).

    A worker that answers some calls and not others has just come online (the
    broadcasts sent before it subscribed went unheard), just gone away, or
    stalled; one poll cannot tell which, so such a poll is repeated at once,
    once: a worker that joined then answers every call, one that went away
    answers none and leaves the lists. A repeat that is again part-answered
    (by any worker: two workers taking turns must not repeat it for ever)
    makes the lists stale: they would be half true.
    """
    answered = [frozenset(reply or ()) for reply in replies]
    responders = frozenset().union(*answered)
    if not responders:
        return Verdict(stale_reason=NO_WORKER)
    partial = responders - frozenset.intersection(*answered)
    if partial and partial_before:
        return Verdict(stale_reason=HALF_ANSWERED, ask=responders, partial=partial)
    return Verdict(poll_again=bool(partial), ask=responders, partial=partial)


@dataclass(frozen=True)
class PollFailure:
    """Why a poll raised: `reason` is the stale reason clients see;
    `broker_down` tells a broker that cannot be reached from a bug here."""

    reason: str
    broker_down: bool


def classify_failure(exc: BaseException,
                     broker_errors: Tuple[Type[BaseException], ...]) -> PollFailure:
    """A broker error (one of `broker_errors`) means the broker is unreachable;
    anything else is a bug in this server, named by its type only (its message
    may hold data; the traceback goes to the server log)."""
    if isinstance(exc, broker_errors):
        return PollFailure(f"broker unreachable: {type(exc).__name__}: {exc}", broker_down=True)
    return PollFailure(f"inspect poll failed: internal error ({type(exc).__name__}); "
                       "see the server log", broker_down=False)
