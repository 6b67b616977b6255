"""The webhooks alerts are posted to, as `NOTIFY_ALERT_WEBHOOKS` lists them (pure).

A webhook's URL path is its secret (a Slack incoming webhook is
`https://hooks.slack.com/services/T…/B…/<token>`): everything here that names a
webhook in an error or a log line names it by `redact(url)` only.
"""

import dataclasses
from typing import Tuple
from urllib.parse import urlsplit

JSON = "json"
SLACK = "slack"
FORMATS = (JSON, SLACK)


@dataclasses.dataclass(frozen=True)
class Webhook:
    """One receiver: its URL and the body `format` it takes (`json` or `slack`)."""

    url: str
    format: str = JSON

    @property
    def shown(self) -> str:
        """The URL as logs show it: without its path, query and credentials."""
        return redact(self.url)


def redact(url: str) -> str:
    """`scheme://host[:port]/…`: what may be logged of `url`. Never raises;
    a URL that does not parse is shown as `(unparsable URL)`."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(unparsable URL)"
    if not host:
        return f"{parts.scheme or '?'}://?/…"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}/…"


def parse_webhooks(value: str) -> Tuple[Webhook, ...]:
    """The webhooks of a comma-separated list of `format=url` or `url` entries
    (format `json` when not given). Raises ValueError naming the entry by its
    number and `redact(url)`, never by its path: a scheme other than http or
    https, no host, an unknown format or a URL given twice."""
    hooks = []
    entries = [part.strip() for part in value.split(",") if part.strip()]
    for number, entry in enumerate(entries, 1):
        head, sep, tail = entry.partition("=")
        kind, url = (head.strip().lower(), tail.strip()) if sep and "://" not in head \
            else (JSON, entry)
        where = f"entry {number} ({redact(url)})"
        try:
            parts = urlsplit(url)
            host, _ = parts.hostname, parts.port
        except ValueError:
            raise ValueError(f"{where} is not a URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(f"{where} must be an http:// or https:// URL with a host")
        if kind not in FORMATS:
            raise ValueError(f"{where} has the unknown format {kind[:20]!r}: give "
                             f"{' or '.join(FORMATS)}, as in slack=https://hooks.slack.com/…")
        if any(hook.url == url for hook in hooks):
            raise ValueError(f"{where} is listed twice")
        hooks.append(Webhook(url, kind))
    return tuple(hooks)
