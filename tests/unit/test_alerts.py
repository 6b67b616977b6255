"""The alerts' rules: webhooks parsed and redacted, which events match, the
budget, the outbox's order and summaries, and the bodies posted."""

import pytest

from notify_server.alerts.bodies import body, id_time, slack_escape
from notify_server.alerts.budget import Budget
from notify_server.alerts.outbox import Gap, Outbox, Post, Summary, before
from notify_server.alerts.rules import AlertRules
from notify_server.alerts.webhooks import Webhook, parse_webhooks, redact
from notify_server.protocol import task_events as events
from notify_server.protocol.stream import Event
from notify_server.redis_io.alert_sender import retry_after, retryable

SECRET = "T000/B000/XXXXsecretXXXX"
SLACK_URL = f"https://hooks.slack.com/services/{SECRET}"


def failed(number: int, name: str = "app.tasks.upload", message: str = "ValueError: no") -> Event:
    event = events.task_failed(f"t-{number}", "A-1", message)
    return Event(event["type"], event["data"], id=f"1700000000{number:03d}-0",
                 meta={"name": name, "worker": "celery@h1"} if name else None)


# -- webhooks ------------------------------------------------------------------------------

def test_webhooks_are_parsed_with_their_format_json_by_default():
    listed = f" slack={SLACK_URL} , http://127.0.0.1:9000/in?k=v=w,json=https://a.b/c"
    assert parse_webhooks(listed) == (
        Webhook(SLACK_URL, "slack"), Webhook("http://127.0.0.1:9000/in?k=v=w", "json"),
        Webhook("https://a.b/c", "json"))
    assert parse_webhooks("") == ()


@pytest.mark.parametrize("value, says", [
    (f"ftp://hooks.slack.com/services/{SECRET}", "entry 1 (ftp://hooks.slack.com/…) must be"),
    (f"https:///services/{SECRET}", "must be an http:// or https:// URL with a host"),
    (f"http://a.b/x,slak={SLACK_URL}", "entry 2 (https://hooks.slack.com/…) has the unknown "
                                       "format 'slak'"),
    (f"{SLACK_URL},json={SLACK_URL}", "entry 2 (https://hooks.slack.com/…) is listed twice"),
    (f"https://hooks.slack.com:99999/{SECRET}", "entry 1"),
])
def test_a_bad_webhook_is_named_by_scheme_and_host_never_by_its_secret_path(value, says):
    with pytest.raises(ValueError) as caught:
        parse_webhooks(value)
    assert says in str(caught.value)
    assert "secret" not in str(caught.value) and "services" not in str(caught.value)


@pytest.mark.parametrize("url, shown", [
    (SLACK_URL, "https://hooks.slack.com/…"),
    ("http://user:pw@127.0.0.1:8080/hook?token=x", "http://127.0.0.1:8080/…"),
    ("http://[::1]:81/x", "http://[::1]:81/…"),
    ("http://h:99999/x", "(unparsable URL)"),
])
def test_redact_keeps_scheme_host_and_port_only(url, shown):
    assert redact(url) == shown == Webhook(url).shown


# -- rules -----------------------------------------------------------------------------------

def test_failed_is_alerted_by_default_and_other_statuses_only_when_listed():
    revoked = events.task_revoked("t-1", "A", "terminated")
    offline = events.worker_offline("celery@h1", 1.0, "lost")
    revoked, offline = (Event(e["type"], e["data"], id="1-0") for e in (revoked, offline))
    completed = events.task_completed("t-1", "A", "ok")
    assert AlertRules().matches(failed(1))
    assert not AlertRules().matches(revoked)
    assert not AlertRules().matches(Event(completed["type"], completed["data"], id="1-0"))
    everything = AlertRules(statuses=("failed", "revoked", "rejected", "retrying",
                                      "worker_offline"))
    assert everything.matches(revoked) and everything.matches(offline)


def test_task_patterns_match_the_name_and_an_unnamed_event_only_without_patterns():
    rules = AlertRules(tasks=("app.tasks.*", "billing.charge"))
    assert rules.matches(failed(1, "app.tasks.upload"))
    assert rules.matches(failed(2, "billing.charge"))
    assert not rules.matches(failed(3, "billing.refund"))
    assert not rules.matches(failed(4, name=None))
    assert AlertRules().matches(failed(5, name=None))


def test_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown alert status 'lost'"):
        AlertRules(statuses=("failed", "lost"))


# -- budget ----------------------------------------------------------------------------------

def test_the_budget_allows_a_burst_then_refills_per_minute():
    budget = Budget(5, now=100.0)
    for _ in range(5):
        assert budget.available(100.0)
        budget.spend(100.0)
    assert not budget.available(100.0)
    assert budget.wait(100.0) == pytest.approx(12.0)
    assert not budget.available(111.9)
    assert budget.available(112.0)
    assert budget.wait(112.0) == 0.0


# -- outbox ----------------------------------------------------------------------------------

def deliver_all(outbox: Outbox, now: float) -> list:
    posts = []
    while (post := outbox.next_post(now)) is not None:
        assert outbox.next_post(now) is post  # the same until done
        posts.append(post)
        outbox.done(now)
    return posts


def test_alerts_go_one_by_one_in_order_and_the_position_follows_them():
    outbox = Outbox("5-0", per_minute=10, now=0.0)
    assert outbox.kept == outbox.cursor == "5-0"
    first, second = failed(1), failed(2)
    outbox.read(first.id, first)
    outbox.read("1700000000001-5", None)  # unmatched, read
    outbox.read(second.id, second)
    assert outbox.kept == "5-0"  # nothing delivered yet
    head = outbox.next_post(0.0)
    assert head.content is first and head.alert_id == first.id
    outbox.done(0.0)
    assert outbox.kept == first.id
    assert outbox.next_post(0.0).content is second
    outbox.done(0.0)
    assert outbox.kept == outbox.cursor == second.id
    assert outbox.next_post(0.0) is None and outbox.wake_in(0.0) is None


def test_a_storm_gives_the_budget_in_single_posts_then_one_summary_when_it_refills():
    outbox = Outbox("0-0", per_minute=5, now=0.0)
    storm = [failed(n, name="a" if n % 3 else "b") for n in range(1, 201)]
    for event in storm:
        outbox.read(event.id, event)
    singles = deliver_all(outbox, 0.0)
    assert [post.content for post in singles] == storm[:5]
    assert outbox.kept == storm[4].id
    assert outbox.wake_in(0.0) == pytest.approx(12.0)
    assert outbox.next_post(11.0) is None
    later = failed(201, name="a")
    outbox.read(later.id, later)  # joins the summary
    [summary] = deliver_all(outbox, 12.0)
    gathered = summary.content
    assert isinstance(gathered, Summary) and gathered.count == 196 == outbox.summarised
    assert gathered.names == {"a": 131, "b": 65}
    assert (gathered.first_id, gathered.last_id) == (storm[5].id, later.id)
    assert summary.alert_id == f"{storm[5].id}..{later.id}"
    assert outbox.kept == later.id


def test_a_trimmed_cursor_gives_a_gap_post_first_even_over_budget():
    outbox = Outbox("1700000000001-0", per_minute=1, now=0.0)
    outbox.read(failed(2).id, failed(2))
    deliver_all(outbox, 0.0)
    assert not outbox.history_starts_at(failed(1).id)  # the cursor is still there
    assert not outbox.history_starts_at("1700000000002-1")  # only the cursor went
    assert outbox.history_starts_at("1700000000009-0")
    assert outbox.cursor == "1700000000008-18446744073709551615"
    [post] = deliver_all(outbox, 0.0)
    assert post.content == Gap(failed(2).id, "1700000000009-0")
    assert post.alert_id == f"gap:{failed(2).id}..1700000000009-0"
    assert outbox.kept == "1700000000008-18446744073709551615"


def test_a_gap_while_a_summary_waits_keeps_the_position_before_the_summary():
    outbox = Outbox("0-0", per_minute=1, now=0.0)
    for event in (failed(1), failed(2)):
        outbox.read(event.id, event)
    deliver_all(outbox, 0.0)  # the first alone; the second gathered
    assert outbox.history_starts_at("1700000000009-0")
    [gap] = deliver_all(outbox, 0.0)
    assert isinstance(gap.content, Gap)
    assert outbox.kept == failed(1).id
    assert deliver_all(outbox, 60.0) == []  # the gap post spent a token too
    [summary] = deliver_all(outbox, 120.0)
    assert summary.content.count == 1
    assert outbox.kept == outbox.cursor


def test_a_position_kept_from_an_empty_history_is_never_a_gap():
    outbox = Outbox("0-0", per_minute=1, now=0.0)
    assert not outbox.history_starts_at("1700000000009-0")
    assert outbox.next_post(0.0) is None


@pytest.mark.parametrize("stream_id, previous", [("5-3", "5-2"), ("5-0", "4-18446744073709551615"),
                                                 ("0-0", "0-0")])
def test_before_is_the_greatest_id_below(stream_id, previous):
    assert before(stream_id) == previous


# -- bodies ----------------------------------------------------------------------------------

def test_the_json_body_has_the_event_its_fields_and_a_text():
    event = failed(7, message="ValueError: cannot do A-1")
    event.owner = "alice"
    assert body("json", Post(event)) == {
        "id": event.id, "kind": "alert", "type": "task_failed", "task_id": "t-7",
        "name": "app.tasks.upload", "status": "failed", "message": "ValueError: cannot do A-1",
        "exception": "ValueError", "worker": "celery@h1", "time": id_time(event.id),
        "text": "Task app.tasks.upload (t-7) failed: ValueError: cannot do A-1",
        "event": {"type": "task_failed", "data": event.data, "owner": "alice",
                  "meta": {"name": "app.tasks.upload", "worker": "celery@h1"}}}


def test_a_worker_offline_body_names_the_worker():
    offline = events.worker_offline("celery@h2", 1.0, "heartbeat lost")
    sent = body("json", Post(Event(offline["type"], offline["data"], id="1700000000000-0")))
    assert sent["text"] == "Worker celery@h2 went offline: heartbeat lost"
    assert sent["worker"] == "celery@h2" and sent["message"] == "heartbeat lost"
    assert sent["exception"] is None
    assert body("json", Post(failed(1, message="it broke")))["exception"] is None


def test_the_slack_body_is_text_and_blocks_with_markup_escaped():
    event = failed(3, name="a<b>&c", message="KeyError: <@U123> & <!channel>")
    sent = body("slack", Post(event))
    escaped = ("Task a&lt;b&gt;&amp;c (t-3) failed: KeyError: &lt;@U123&gt; &amp; "
               "&lt;!channel&gt;")
    assert sent == {"text": escaped, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": escaped}},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"id `{event.id}` · worker celery@h1"}]}]}


def test_a_long_message_is_cut_to_what_a_slack_section_takes():
    sent = body("slack", Post(failed(1, message="x" * 10000)))
    assert len(sent["blocks"][0]["text"]["text"]) == 2900


def test_summary_and_gap_bodies_say_what_they_cover():
    summary = Summary(195, {"a": 130, "b": 65}, "1700000000005-0", "1700000000200-0")
    sent = body("json", Post(summary))
    assert sent["kind"] == "alert_summary" and sent["count"] == 195
    assert sent["names"] == {"a": 130, "b": 65}
    assert sent["text"].startswith("195 more alerts from 2023-11-14T22:13:20.005Z to ")
    assert "a ×130, b ×65" in sent["text"]
    gap = body("slack", Post(Gap("1700000000005-0", "1700000000200-0")))
    assert gap["text"].startswith("Alerts may have been missed between 2023-11-14T22:13:20.005Z")


def test_slack_escape_escapes_only_what_slack_reads_as_markup():
    assert slack_escape("a & b < c > d *e* `f`") == "a &amp; b &lt; c &gt; d *e* `f`"


# -- what the sender retries ---------------------------------------------------------------

def test_no_answer_5xx_408_and_429_are_retried_other_answers_are_not():
    assert [code for code in (200, 204, 301, 400, 403, 404, 408, 410, 429, 500, 503, 599)
            if retryable(code)] == [408, 429, 500, 503, 599]


@pytest.mark.parametrize("header, seconds", [(None, 0.0), ("", 0.0), ("7", 7.0), ("3600", 30.0),
                                             ("Wed, 21 Oct 2026 07:28:00 GMT", 0.0),
                                             ("-1", 0.0), ("١", 0.0)])
def test_retry_after_is_honoured_in_seconds_up_to_the_cap(header, seconds):
    assert retry_after(header) == seconds


# -- the settings ----------------------------------------------------------------------------

def test_a_bad_webhook_setting_is_a_setting_error_without_the_secret_path():
    import settings
    with pytest.raises(settings.SettingError) as caught:
        settings.load([], {"NOTIFY_ALERT_WEBHOOKS": f"slack={SLACK_URL},teams={SLACK_URL}x"})
    assert str(caught.value) == ("NOTIFY_ALERT_WEBHOOKS: entry 2 (https://hooks.slack.com/…) has "
                                 "the unknown format 'teams': give json or slack, as in "
                                 "slack=https://hooks.slack.com/…")
    with pytest.raises(settings.SettingError, match="--alert-webhooks: entry 1") as caught:
        settings.load(["--alert-webhooks", f"hooks.slack.com/services/{SECRET}"], {})
    assert SECRET not in str(caught.value)


def test_the_alert_settings_reach_the_config():
    import settings
    loaded = settings.load([], {"NOTIFY_ALERT_WEBHOOKS": f"slack={SLACK_URL}",
                                "NOTIFY_ALERT_STATUSES": "failed, worker_offline",
                                "NOTIFY_ALERT_TASKS": "billing.*", "NOTIFY_ALERT_PER_MINUTE": "3",
                                "NOTIFY_ALERT_TIMEOUT": "1.5"})
    alerts = loaded.server_config("i").alerts
    assert alerts.webhooks == (Webhook(SLACK_URL, "slack"),)
    assert (alerts.statuses, alerts.tasks, alerts.per_minute, alerts.timeout) == (
        ("failed", "worker_offline"), ("billing.*",), 3, 1.5)
    with pytest.raises(settings.SettingError, match="must be one or more of failed, revoked"):
        settings.load([], {"NOTIFY_ALERT_STATUSES": "failed,crashed"})
