"""Alerts posted to one webhook from the history stream, while this process leads.

An adapter (redis.asyncio and Tornado's HTTP client) around `alerts.Outbox`.
Only the lease holder sends; it reads the history stream from the position
kept in Redis (`Keys.alert_position`), so a restart or a new leader goes on
where the last sender stopped. A post is retried until the webhook answers
(at least once, in stream order: later alerts wait behind it), and the
position moves only after that answer, in one step with a check that this
process still holds the lease. So the one post in flight when a leader dies
can be sent twice; every post carries its `X-Notify-Alert-Id` for that.
Logs name the webhook by `Webhook.shown` only: its path is its secret.
"""

import asyncio
import logging
import time
from typing import Callable, Optional

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from notify_server.alerts.bodies import body
from notify_server.alerts.outbox import Outbox, Post
from notify_server.alerts.rules import AlertRules
from notify_server.alerts.webhooks import Webhook
from notify_server.redis_io.backoff import Backoff
from notify_server.redis_io.history import History

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
# How long a read of the history waits for entries: how soon a lost lease or
# a summary the budget allows again is noticed.
READ_BLOCK = 1.0
# Retries of a failing post: full jitter up to 30 s, forever.
RETRY_BASE, RETRY_CAP = 0.5, 30.0
ALERT_ID_HEADER = "X-Notify-Alert-Id"

# Move the position only while this process holds the lease: 1 when written.
KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[2], ARGV[2])
    return 1
end
return 0
"""


def retryable(code: int) -> bool:
    """Whether a post answered `code` is tried again (599: no answer at all)."""
    return code >= 500 or code in (408, 429)


def retry_after(value: Optional[str]) -> float:
    """The seconds a `Retry-After` header asks for (Slack's 429 sends one), at
    most RETRY_CAP; 0 without one, or for the HTTP-date form."""
    text = (value or "").strip()
    return min(float(text), RETRY_CAP) if text.isascii() and text.isdigit() else 0.0


class AlertCounts:
    """What the sender reports, as callables (the metrics' counters)."""

    def __init__(self, sent: Callable[[str], None], failed: Callable[[], None],
                 dropped: Callable[[str], None], summarised: Callable[[int], None]):
        self.sent, self.failed, self.dropped, self.summarised = sent, failed, dropped, summarised


class AlertSender:
    """Posts the alerts `rules` match to `webhook`, `per_minute` at most (then
    summaries), each within `timeout` seconds. `leading()` says whether this
    process holds the lease (checked before each read and each attempt);
    `leader_key` and `identity` are the lease's key and holder name."""

    def __init__(self, webhook: Webhook, redis: Redis, history: History, position_key: str,
                 leader_key: str, identity: str, rules: AlertRules, per_minute: int,
                 timeout: float, leading: Callable[[], bool], counts: AlertCounts):
        self.webhook = webhook
        self._redis, self._history = redis, history
        self._position_key, self._leader_key, self._identity = position_key, leader_key, identity
        self._rules, self._per_minute, self._timeout = rules, per_minute, timeout
        self._leading, self._counts = leading, counts
        self._keep = redis.register_script(KEEP)
        self._http = AsyncHTTPClient(force_instance=True)

    async def run(self) -> None:
        """Send while leading, wait while not, until cancelled; never raises.
        A Redis outage is logged once and retried with backoff."""
        outage = Backoff(base=0.2, cap=5.0)
        while True:
            if not self._leading():
                await asyncio.sleep(READ_BLOCK / 4)
                continue
            try:
                await self._lead()
                outage.reset()
                # The lease went (or Redis named another holder before this
                # process's clock said so): wait before trying again.
                await asyncio.sleep(READ_BLOCK / 4)
            except (RedisError, OSError) as exc:
                if not outage.attempts:
                    log.warning("alerts to %s: Redis failed (%s); trying again with backoff",
                                self.webhook.shown, exc)
                await asyncio.sleep(outage.next_delay())
            except Exception:  # a bug: logged, and alerts go on rather than stop for good
                log.exception("alerts to %s: sender failed; starting again from the kept "
                              "position", self.webhook.shown)
                await asyncio.sleep(outage.next_delay())

    async def _lead(self) -> None:
        """From the kept position, send until the lease is lost."""
        position = await self._start_position()
        if position is None:
            return  # another process leads
        outbox = Outbox(position, self._per_minute, time.monotonic())
        kept, summarised = position, 0
        while self._leading():
            post = outbox.next_post(time.monotonic())
            if post is not None:
                if not await self._deliver(post):
                    return
                outbox.done(time.monotonic())
            else:
                await self._read(outbox)
            if outbox.summarised != summarised:
                self._counts.summarised(outbox.summarised - summarised)
                summarised = outbox.summarised
            if outbox.kept != kept:
                if not await self._keep(keys=[self._leader_key, self._position_key],
                                        args=[self._identity, outbox.kept]):
                    return  # another process leads now: it goes on from the kept position
                kept = outbox.kept

    async def _start_position(self) -> Optional[str]:
        """The kept position; when none is kept yet, the history's end, kept now
        (alerts are for what happens from now on, not for old history). None
        when the lease key names another process."""
        kept = await self._redis.get(self._position_key)
        if kept is not None:
            position = kept.decode() if isinstance(kept, bytes) else kept
            log.info("alerts to %s (%s): sending after the kept position %s",
                     self.webhook.shown, self.webhook.format, position)
            return position
        position = await self._history.last_id() or "0-0"
        if not await self._keep(keys=[self._leader_key, self._position_key],
                                args=[self._identity, position]):
            return None
        log.info("alerts to %s (%s): no position kept; sending after the history's end, %s",
                 self.webhook.shown, self.webhook.format, position)
        return position

    async def _read(self, outbox: Outbox) -> None:
        first = await self._history.first_id()
        if first is not None and outbox.history_starts_at(first):
            log.warning("alerts to %s: the history was trimmed past the position before it "
                        "was read; alerts may have been missed before %s (a gap alert follows)",
                        self.webhook.shown, first)
            return
        wait = outbox.wake_in(time.monotonic())
        entries = await self._history.wait_after(
            outbox.cursor, READ_BLOCK if wait is None else min(READ_BLOCK, max(wait, 0.001)))
        for entry_id, event in entries:
            outbox.read(entry_id, event if event is not None and self._rules.matches(event)
                        else None)

    async def _deliver(self, post: Post) -> bool:
        """Post until the webhook answers other than with a retryable failure;
        True then, False when the lease is lost first (the post is left to
        the next leader)."""
        retries = Backoff(base=RETRY_BASE, cap=RETRY_CAP)
        payload = orjson.dumps(body(self.webhook.format, post))
        while True:
            code, reason, wait = await self._post(post.alert_id, payload)
            if 200 <= code < 300:
                self._counts.sent(self.webhook.format)
                if retries.attempts:
                    log.info("alerts to %s: delivered again, after %d failed attempt(s)",
                             self.webhook.shown, retries.attempts)
                return True
            if not retryable(code):
                self._counts.dropped(f"http_{code}")
                log.warning("alerts to %s: HTTP %d for alert %s; not retried, dropped",
                            self.webhook.shown, code, post.alert_id)
                return True
            self._counts.failed()
            if not retries.attempts:
                log.warning("alerts to %s: %s for alert %s; retrying with backoff (at most "
                            "%g s apart) until it is delivered", self.webhook.shown, reason,
                            post.alert_id, RETRY_CAP)
            await asyncio.sleep(max(retries.next_delay(), wait))
            if not self._leading():
                return False

    async def _post(self, alert_id: str, payload: bytes) -> "tuple[int, str, float]":
        """(status, what went wrong, seconds the webhook asked to wait) of one
        attempt; status 599 when nothing answered."""
        request = HTTPRequest(
            self.webhook.url, method="POST", body=payload, follow_redirects=False,
            connect_timeout=min(CONNECT_TIMEOUT, self._timeout), request_timeout=self._timeout,
            headers={"Content-Type": "application/json", ALERT_ID_HEADER: alert_id,
                     "User-Agent": "notify-server-alerts"})
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPClientError as exc:
            return exc.code, _scrubbed(str(exc), self.webhook), 0.0
        except (OSError, asyncio.TimeoutError) as exc:
            return 599, _scrubbed(f"{type(exc).__name__}: {exc}", self.webhook), 0.0
        return (response.code, f"HTTP {response.code}",
                retry_after(response.headers.get("Retry-After")))

    def close(self) -> None:
        """Close the HTTP client (after `run` was cancelled)."""
        self._http.close()


def _scrubbed(text: str, webhook: Webhook) -> str:
    """`text` without the webhook's URL, should an error message quote it."""
    return text.replace(webhook.url, webhook.shown)
