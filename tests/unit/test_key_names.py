"""The Redis names workers and servers meet at are the ones docs/protocol.md section 6 documents."""

from pathlib import Path

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


def test_the_default_prefix_is_notify():
    assert Keys().history_stream == "notify:events:history"
