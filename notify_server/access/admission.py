"""Who may connect, and for how long: tokens, connection limits, action
rates and token expiry, for every socket of one process.

Pure: the clock (`now`) and the timer (`call_later(delay, callback)`, which
returns a handle with `cancel()`) are handed in; the server passes the event
loop's. Every method runs on the event-loop thread.
"""

from typing import Callable, Dict, Optional, Tuple

from notify_server.access.auth import EVERYONE, Authenticator, AuthError, Scope
from notify_server.access.limits import ActionBucket, ConnectionCounter
from notify_server.config import AccessConfig
from notify_server.protocol import close_codes, messages
from notify_server.protocol.messages import ProtocolError


class Admission:
    """Admits sockets: counts them against the limits, verifies tokens and
    closes each token-mode socket when its token runs out.

    `on_refused(reason)` is told of each refusal (`token`, `limit`, `rate`,
    `flood`), for the metrics.
    """

    def __init__(self, config: AccessConfig, now: Callable[[], float],
                 monotonic: Callable[[], float], call_later: Callable,
                 on_refused: Callable[[str], None]):
        self._config = config
        self._now, self._monotonic, self._call_later = now, monotonic, call_later
        self._on_refused = on_refused
        self._counter = ConnectionCounter(config.max_connections, config.max_connections_per_ip)
        self._authenticator = (Authenticator(config.auth_secrets, config.auth_leeway)
                               if config.auth_secrets else None)
        self._expiry: Dict[object, object] = {}  # connection -> timer handle

    def authenticate(self, token: Optional[str]) -> Scope:
        """The scope of a client presenting `token` (None when it sent none):
        `EVERYONE` in open mode, whatever it sent. Raises `AuthError`."""
        if self._authenticator is None:
            return EVERYONE
        try:
            return self._authenticator.verify(token)
        except AuthError:
            self._on_refused("token")
            raise

    def refusal(self, address: str) -> Optional[Tuple[int, str]]:
        """(HTTP status, message) when one more socket from `address` would
        be over a connection limit (503 in all, 429 for the address), else None."""
        refusal = self._counter.refusal(address)
        if refusal is not None:
            self._on_refused("limit")
        return refusal

    def hold_slot(self, address: str) -> Callable[[], None]:
        """Count a socket from `address` against the connection limits until
        the returned function is called (any number of times)."""
        self._counter.add(address)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._counter.remove(address)
        return release

    def count_refused(self, reason: str) -> None:
        """Count one refusal a handler decided (`rate`, `flood`)."""
        self._on_refused(reason)

    def action_bucket(self) -> ActionBucket:
        """A fresh rate limit for one socket's actions."""
        return ActionBucket(self._config.action_rate, self._config.action_burst,
                            self._monotonic())

    def admit(self, connection, scope: Scope) -> None:
        """Count an opened `connection` (its `peer` address) against the
        limits and close it with 4001 when `scope`'s token runs out, until
        `leave(connection)`. Nothing is allocated per socket but the count
        (and the expiry timer in token mode)."""
        self._counter.add(connection.peer)
        self.expire_at(connection, scope)

    def leave(self, connection) -> None:
        """`connection`, admitted once, has closed: stop counting it and
        cancel its expiry. Call it once."""
        self._counter.remove(connection.peer)
        handle = self._expiry.pop(connection, None)
        if handle is not None:
            handle.cancel()

    def refresh(self, connection, scope: Scope, token: str) -> Tuple[Scope, bytes]:
        """Take a newer token for an open socket seeing `scope`: the same
        `sub`, a later expiry. Returns the new scope and the `refreshed` reply
        frame; raises `ProtocolError` (`auth_disabled` in open mode,
        `invalid_token` for a token that does not verify or is another
        subject's)."""
        if self._authenticator is None:
            raise ProtocolError(messages.AUTH_DISABLED, "this server has no tokens to refresh")
        try:
            renewed = self._authenticator.verify(token)
        except AuthError as exc:
            raise ProtocolError(messages.INVALID_TOKEN, str(exc)) from None
        if renewed.sub != scope.sub:
            raise ProtocolError(messages.INVALID_TOKEN,
                                "the new token is for another subject; reconnect with it")
        self.expire_at(connection, renewed)
        return renewed, messages.frame(messages.refreshed(renewed.expires_at))

    def expire_at(self, connection, scope: Scope) -> None:
        """Close `connection` with 4001 when `scope` expires (plus the
        leeway); replaces any earlier expiry of it."""
        handle = self._expiry.pop(connection, None)
        if handle is not None:
            handle.cancel()
        if scope.expires_at is None or self._authenticator is None:
            return
        delay = max(0.0, scope.expires_at + self._authenticator.leeway - self._now())
        self._expiry[connection] = self._call_later(delay, connection.close,
                                                    *close_codes.TOKEN_EXPIRED)
