"""Every way the server closes a client socket: code and reason, in one table.

docs/protocol.md (section 2.6) documents the same table for clients: 1001
means reconnect (to another process), 1008 and 4008 reconnect more slowly,
1011 reconnect and resume, 4001 get a new token first.
"""

from typing import NamedTuple

GOING_AWAY = 1001       # shutting down, or a dead peer: reconnect
POLICY = 1008           # actions over the rate limit, again and again
TOO_BIG = 1009          # an inbound frame over the size limit (Tornado sends it)
INTERNAL_ERROR = 1011   # the server failed to deliver to this socket: reconnect, resume
UNAUTHORIZED = 4001     # no valid token, or it expired: get a new one, then reconnect
SLOW = 4008             # the client did not read fast enough; its backlog was dropped


class Close(NamedTuple):
    """One close: `connection.close(*SHUTTING_DOWN)`."""

    code: int
    reason: str


SHUTTING_DOWN = Close(GOING_AWAY, "server shutting down")
PING_TIMEOUT = Close(GOING_AWAY, "ping timeout")
RATE_LIMIT = Close(POLICY, "rate limit exceeded")
FAILED = Close(INTERNAL_ERROR, "internal error; reconnect and resume")
TOKEN_EXPIRED = Close(UNAUTHORIZED, "token expired")
SLOW_CLIENT = Close(SLOW, "slow client: outgoing buffer full")
# A token refused at open closes with UNAUTHORIZED and the reason it was refused.
