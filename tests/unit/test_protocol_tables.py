"""What workers, servers and clients meet at, as docs/protocol.md documents it: the Redis
names (section 6) and the close codes (section 2.6)."""

import re
from pathlib import Path

from notify_server.protocol import close_codes
from notify_server.protocol.names import Keys

PROTOCOL = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def test_every_key_under_a_prefix_is_documented_as_protocol_md_names_it():
    keys = Keys("PREFIX")
    names = [keys.history_stream, keys.events_channel, keys.leader_key, keys.queue_key,
             keys.queue_channel, keys.once_prefix + "<task_id>:<type>:<attempt>"]
    assert names == ["PREFIX:events:history", "PREFIX:events", "PREFIX:poller:leader",
                     "PREFIX:queue:snapshot", "PREFIX:queue",
                     "PREFIX:once:<task_id>:<type>:<attempt>"]
    assert [name for name in names if f"`{name}`" not in PROTOCOL] == []


def test_the_alert_position_key_is_named_by_a_digest_of_the_url_as_documented():
    key = Keys("PREFIX").alert_position("https://hooks.slack.com/services/T/B/secret")
    assert re.fullmatch(r"PREFIX:alerts:[0-9a-f]{12}:position", key)
    assert "`PREFIX:alerts:<digest>:position`" in PROTOCOL


def test_the_default_prefix_is_notify():
    assert Keys().history_stream == "notify:events:history"


def test_every_close_the_server_sends_is_a_row_of_the_close_code_table():
    table = PROTOCOL.split("### 2.6 Close codes", 1)[1].split("###", 1)[0]
    closes = [value for value in vars(close_codes).values() if isinstance(value, close_codes.Close)]
    assert len(closes) == 6
    assert [close for close in closes
            if f"| {close.code} | `{close.reason}`" not in table
            and f"`{close.reason}`" not in table.split(f"| {close.code} |", 1)[-1].split("\n")[0]
            ] == []


def test_every_task_record_key_is_documented_as_protocol_md_names_it():
    keys = Keys("PREFIX")
    names = [keys.record("<task_id>"), keys.record_events("<task_id>"), keys.all_records, keys.status_records("<status>"),
             keys.owner_records("<owner>"), keys.status_records("<status>", "<owner>"),
             keys.minute_counts("<unix minute>"), keys.records_config]
    assert [name for name in names if f"`{name}`" not in PROTOCOL] == []
