"""Who a client is and which tasks it may see: signed tokens and scopes.

Pure (no I/O). Tokens are JWTs signed with HS256 and verified by PyJWT;
nothing here parses or checks a signature by hand. In open mode (no secret)
every client gets `EVERYONE`, which sees every event, as before tokens
existed.
"""

import dataclasses
from typing import FrozenSet, Optional, Sequence

import jwt

# A token longer than this is refused before it is decoded.
MAX_TOKEN_BYTES = 8192
# Each secret must be at least this long (RFC 7518 3.2: a key as long as the hash).
MIN_SECRET_LENGTH = 32


class AuthError(ValueError):
    """A token that does not admit its bearer; `str()` is the reason a client
    is told (close reason or REST message), short and without the token."""


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one client may see.

    `owners` is None for a scope that sees everything (an admin token, or
    every client in open mode); otherwise the owners whose task events and
    queue entries it sees. Events without an owner are for the unlimited
    scopes only.
    """

    sub: Optional[str] = None
    owners: Optional[FrozenSet[str]] = None
    expires_at: Optional[float] = None

    @property
    def sees_everything(self) -> bool:
        return self.owners is None

    def sees(self, owner: Optional[str]) -> bool:
        return self.owners is None or (owner is not None and owner in self.owners)


EVERYONE = Scope()


class Authenticator:
    """Verifies tokens against one or more secrets (any may verify: rotation).

    `leeway` seconds of clock skew are tolerated on `exp` and `nbf`.
    """

    def __init__(self, secrets: Sequence[str], leeway: float):
        if not secrets:
            raise ValueError("at least one secret is needed")
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(f"each secret must be at least {MIN_SECRET_LENGTH} characters")
        self._secrets = tuple(secrets)
        self.leeway = leeway

    def verify(self, token: Optional[str]) -> Scope:
        """The scope of a valid token; raises `AuthError` saying why not."""
        if not token:
            raise AuthError("token required")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(f"invalid token: longer than {MAX_TOKEN_BYTES} bytes")
        claims = self._decode(token)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("invalid token: 'sub' must be a non-empty string")
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise AuthError("invalid token: 'admin' must be true or false")
        owners = claims.get("owners", [sub])
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise AuthError("invalid token: 'owners' must be a list of strings")
        return Scope(sub=sub, owners=None if admin else frozenset(owners),
                     expires_at=float(claims["exp"]))

    def _decode(self, token: str) -> dict:
        last: Optional[Exception] = None
        for secret in self._secrets:
            try:
                return jwt.decode(token, secret, algorithms=["HS256"], leeway=self.leeway,
                                  options={"require": ["exp", "sub"]})
            except jwt.InvalidSignatureError as exc:
                last = exc  # maybe signed with another of the secrets
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired") from None
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"invalid token: {_reason(exc)}") from None
        raise AuthError(f"invalid token: {_reason(last)}")


def _reason(exc: Optional[Exception]) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
