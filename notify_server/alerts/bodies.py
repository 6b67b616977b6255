"""The body of each post, as plain JSON or as a Slack incoming-webhook message (pure).

Every body carries the post's `id` (docs/protocol.md, "Alerts"): a receiver
de-duplicates on it, since a post is sent at least once.
"""

import datetime
from typing import Any, Dict, List, Optional

from notify_server.alerts.outbox import Gap, Post, Summary
from notify_server.alerts.rules import task_name
from notify_server.alerts.webhooks import SLACK
from notify_server.celery_metrics import UNKNOWN_EXCEPTION, exception_of
from notify_server.protocol import task_events
from notify_server.protocol.stream import Event

ALERT = "alert"
SUMMARY = "alert_summary"
GAP = "alert_gap"
# Slack refuses a section's text above 3000 characters; a traceback can be longer.
SLACK_TEXT_LIMIT = 2900

_VERBS = {task_events.TASK_FAILED: "failed", task_events.TASK_REVOKED: "was revoked",
          task_events.TASK_REJECTED: "was rejected", task_events.TASK_RETRYING: "is retrying"}


def body(format: str, post: Post) -> Dict[str, Any]:
    """What is posted to a webhook of `format` (`json` or `slack`) for `post`."""
    plain = plain_body(post)
    return slack_body(post, plain) if format == SLACK else plain


def plain_body(post: Post) -> Dict[str, Any]:
    """The JSON body: `id`, `kind` and a human `text`, with an event's fields
    (`type`, `task_id`, `name`, `status`, `message`, `exception`, `worker`,
    `time` and the `event` as the history holds it), a summary's or a gap's."""
    content = post.content
    if isinstance(content, Event):
        return _event_fields(post.alert_id, content)
    if isinstance(content, Summary):
        return {"id": post.alert_id, "kind": SUMMARY, "count": content.count,
                "names": dict(sorted(content.names.items(), key=lambda item: -item[1])),
                "first_id": content.first_id, "last_id": content.last_id,
                "first_time": id_time(content.first_id), "last_time": id_time(content.last_id),
                "text": summary_text(content)}
    return {"id": post.alert_id, "kind": GAP, "after_id": content.after_id,
            "before_id": content.before_id, "after_time": id_time(content.after_id),
            "before_time": id_time(content.before_id), "text": gap_text(content)}


def _event_fields(alert_id: str, event: Event) -> Dict[str, Any]:
    data = event.data
    fields = {"id": alert_id, "kind": ALERT, "type": event.type,
              "task_id": data.get("task_id"), "name": task_name(event),
              "status": data.get("status"),
              "message": data.get("message", data.get("reason")),
              "exception": _exception(event),
              "worker": data.get("worker", (event.meta or {}).get("worker")),
              "time": id_time(event.id), "text": event_text(event)}
    stored = {"type": event.type, "data": data}
    if event.owner is not None:
        stored["owner"] = event.owner
    if event.meta is not None:
        stored["meta"] = event.meta
    fields["event"] = stored
    return fields


def _exception(event: Event) -> Optional[str]:
    """The exception class a failure's message names (`ValueError: …`), else None."""
    if event.type != task_events.TASK_FAILED:
        return None
    found = exception_of(event.data.get("message"))
    return None if found == UNKNOWN_EXCEPTION else found


def event_text(event: Event) -> str:
    """One line for a person: what happened to which task or worker, and why."""
    data = event.data
    if event.type == task_events.WORKER_OFFLINE:
        reason = data.get("reason")
        return f"Worker {data.get('worker')} went offline" + (f": {reason}" if reason else "")
    name = task_name(event)
    what = f"Task {name} ({data.get('task_id')})" if name else f"Task {data.get('task_id')}"
    message = data.get("message")
    return f"{what} {_VERBS.get(event.type, event.type)}" + (f": {message}" if message else "")


def summary_text(summary: Summary) -> str:
    names = ", ".join(f"{name} ×{count}" for name, count in
                      sorted(summary.names.items(), key=lambda item: -item[1])[:10])
    more = len(summary.names) - 10
    return (f"{summary.count} more alerts from {id_time(summary.first_id)} to "
            f"{id_time(summary.last_id)}, above the per-minute limit: {names}"
            + (f" and {more} more task names" if more > 0 else ""))


def gap_text(gap: Gap) -> str:
    return (f"Alerts may have been missed between {id_time(gap.after_id)} and "
            f"{id_time(gap.before_id)}: the event history was trimmed before they were read")


def slack_body(post: Post, plain: Dict[str, Any]) -> Dict[str, Any]:
    """Slack's incoming-webhook shape: `text` (the notification's fallback)
    and a section block in mrkdwn, `&`, `<` and `>` escaped, with the ids
    in a context block (Slack takes no field of its own: the id is there and
    in the `X-Notify-Alert-Id` header)."""
    text = slack_escape(plain["text"])
    section = text if len(text) <= SLACK_TEXT_LIMIT else text[:SLACK_TEXT_LIMIT - 1] + "…"
    context: List[str] = [f"id `{slack_escape(post.alert_id)}`"]
    if plain["kind"] == ALERT and plain.get("worker"):
        context.append(f"worker {slack_escape(str(plain['worker']))}")
    return {"text": section,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": section}},
                       {"type": "context", "elements": [
                           {"type": "mrkdwn", "text": " · ".join(context)}]}]}


def slack_escape(text: str) -> str:
    """`text` as Slack shows it literally: `&`, `<` and `>` as entities (else
    `<…>` is read as a link or a mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def id_time(stream_id: str) -> str:
    """The time a stream id was written, as ISO 8601 UTC to the millisecond."""
    millis = int(stream_id.partition("-")[0])
    moment = datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
