"""Client tokens for token-mode tests: signed with PyJWT as an application
signs them, and the forgeries an attacker tries instead."""

import base64
import json
import time

import jwt

# What the test servers are started with (NOTIFY_AUTH_SECRET): 32+ characters.
SECRET = "attack-suite-secret-0123456789abcdefghij"
# A well-formed secret the server does not know.
OTHER_SECRET = "someone-elses-secret-0123456789abcdefghij"


def sign(sub: str, *, ttl: float = 60.0, secret: str = SECRET, algorithm: str = "HS256",
         **claims) -> str:
    """A token for `sub` expiring `ttl` seconds from now (whole seconds, as
    JWT's NumericDate), with any further `claims` (`owners`, `admin`, `nbf`,
    or `exp` to override the expiry)."""
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


def unsigned(sub: str, *, ttl: float = 60.0, **claims) -> str:
    """A token with `alg: none` and an empty signature (RFC 7519 section 6)."""
    header = {"alg": "none", "typ": "JWT"}
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return f"{_segment(header)}.{_segment(payload)}."


def spliced(token: str, **claims) -> str:
    """`token` with `claims` written into its payload and its header and
    signature kept: what an attacker makes of a token they hold."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{_segment({**decoded, **claims})}.{signature}"


def _segment(value: dict) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
