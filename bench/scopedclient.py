"""The load client of the scoped fan-out step (bench/scoped.py), in token mode.

bench.loadclient's process and commands, with one token per socket: socket
`i` of a `connect` carries ``?token=`` a JWT (HS256) whose `sub` is
``owner_prefix + str(i)`` (owners default to [sub]), or, with `shared_owner`,
`sub` = that owner for every socket. Each socket also counts the event frames
it received, so a step can assert who got what:

- `tokens {count, secret, owner_prefix, first, shared_owner, ttl_s}`: sign
  the tokens of the next `connect`'s `count` sockets beforehand (owners
  ``owner_prefix + str(first + i)``, or all `shared_owner`).
- `reset_counts`: every socket's count back to 0.
- `counts`: how many sockets have each count (``{"by_count": {"0": 9999,
  "1": 1}}``), the owners of up to 20 sockets with a non-zero count, and
  how many sockets are still open.
- `latencies`: the current step's per-event latencies (seconds) to the
  first and the last socket, for percentiles pooled over several steps.

Every other command is bench.loadclient's (`connect`, `begin`, `wait`,
`report`, `drain`, `close`, ...), on the same recorder.
"""

import collections
import time

import jwt
import uvloop
from picows import WSMsgType, WSTransport

from bench.loadclient import RECORDER, Client, LoadClient, raise_fd_limit
from bench.procs import serve_commands
from bench.stats import SEQ_KEY

monotonic = time.monotonic
TEXT = WSMsgType.TEXT


class CountingClient(Client):
    """A load-client socket that also counts the event frames it received."""

    __slots__ = ("owner", "events")

    def __init__(self, owner: str):
        super().__init__()
        self.owner = owner
        self.events = 0

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type is TEXT:
            now = monotonic()
            payload = frame.get_payload_as_bytes()
            if SEQ_KEY in payload:
                self.events += 1
            RECORDER.on_frame(self, payload, now)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()


class ScopedLoadClient(LoadClient):
    def __init__(self):
        super().__init__()
        self.tokens = []
        self.owners = []

    def sign(self, count: int, secret: str, owner_prefix: str = "user-", first: int = 0,
             shared_owner: str = None, ttl_s: float = 7200.0) -> dict:
        started = monotonic()
        exp = int(time.time() + ttl_s)
        self.owners = [shared_owner if shared_owner is not None else f"{owner_prefix}{first + n}"
                       for n in range(count)]
        if shared_owner is not None:  # one token serves every socket
            token = jwt.encode({"sub": shared_owner, "exp": exp}, secret, algorithm="HS256")
            self.tokens = [token] * count
        else:
            self.tokens = [jwt.encode({"sub": owner, "exp": exp}, secret, algorithm="HS256")
                           for owner in self.owners]
        return {"signed": count, "distinct_owners": len(set(self.owners)),
                "seconds": round(monotonic() - started, 3)}

    def socket_for(self, url: str, number: int):
        owner = self.owners[number]
        return (lambda: CountingClient(owner)), f"{url}?token={self.tokens[number]}"

    def counts(self) -> dict:
        by_count = collections.Counter(client.events for client in self.clients)
        nonzero = [(client.owner, client.events) for client in self.clients if client.events]
        return {"sockets": len(self.clients),
                "open": sum(1 for client in self.clients if client.transport is not None),
                "by_count": {str(count): n for count, n in sorted(by_count.items())},
                "nonzero_owners": dict(nonzero[:20]), "nonzero_sockets": len(nonzero),
                "disconnected_total": RECORDER.disconnected}

    async def handle(self, command: dict) -> dict:
        name = command["cmd"]
        if name == "tokens":
            command.pop("cmd")
            count = command.pop("count")
            return self.sign(count, **command)
        if name == "reset_counts":
            for client in self.clients:
                client.events = 0
            return {"ok": True}
        if name == "counts":
            return self.counts()
        if name == "latencies":
            return latencies()
        return await super().handle(command)


def latencies() -> dict:
    to_first, to_last = [], []
    for index in range(RECORDER.count):
        if RECORDER.hits[index]:
            sent = RECORDER.sent[index]
            to_first.append(RECORDER.first[index] - sent)
            to_last.append(RECORDER.last[index] - sent)
    return {"to_first_s": to_first, "to_last_s": to_last}


async def main() -> None:
    raise_fd_limit()
    load = ScopedLoadClient()
    await serve_commands(load.handle)
    load.close()


if __name__ == "__main__":
    uvloop.run(main())
