"""The event bridge helper's rules (notify_server.celery_io.bridge_rules):
what a new leader writes again, and when the helper probes, reports its
worker table and looks for silent workers. No Celery, broker or Redis."""

from notify_server.celery_io.bridge_mapping import CeleryEventMapper
from notify_server.celery_io.bridge_rules import (EXPIRY_CHECK_INTERVAL, Every, Probe, TableReports,
                                                  Takeover, replay_window)


def test_a_follower_writes_nothing_it_reads():
    takeover = Takeover(window=10.0)
    assert takeover.lead(False, now=100.0) is None
    assert takeover.read(["a", "b"], now=100.0) == []


def test_taking_the_lease_writes_again_exactly_what_was_read_in_the_window_once():
    takeover = Takeover(window=10.0)
    takeover.read(["too old"], now=100.0)
    takeover.read(["a", "b"], now=102.0)  # on the window's edge at 112
    takeover.read(["c"], now=111.0)

    assert takeover.lead(True, now=112.0) == ["a", "b", "c"]
    assert takeover.lead(True, now=112.5) is None  # nothing twice
    assert takeover.read(["d"], now=113.0) == ["d"]
    assert takeover.lead(True, now=114.0) is None


def test_a_takeover_noticed_with_an_event_writes_the_window_then_that_event_once():
    takeover = Takeover(window=10.0)
    takeover.read(["a"], now=100.0)

    assert takeover.lead(True, now=101.0) == ["a"]
    assert takeover.read(["b"], now=101.0) == ["b"]


def test_a_lease_lost_and_taken_again_writes_the_window_again_for_the_keys_to_sort_out():
    takeover = Takeover(window=10.0)
    takeover.lead(True, now=100.0)
    takeover.read(["a"], now=100.0)
    takeover.lead(False, now=105.0)
    assert takeover.read(["b"], now=106.0) == []  # another process leads

    assert takeover.lead(True, now=111.0) == ["b"]  # "a" left the window at 110


def test_the_replay_keeps_only_the_latest_events_beyond_its_capacity():
    takeover = Takeover(window=10.0, capacity=2)
    takeover.read(["a", "b", "c"], now=100.0)
    assert takeover.lead(True, now=100.0) == ["b", "c"]


def test_the_replay_window_covers_two_leases_and_the_events_in_flight():
    assert replay_window(5.0) == 12.0


def test_a_periodic_action_is_due_at_once_then_once_per_interval_and_again_after_reset():
    every = Every(0.5)
    assert every.due(10.0)
    assert not every.due(10.4)
    assert every.due(10.5)
    every.reset()
    assert every.due(10.6)


def test_the_probe_is_sent_until_it_comes_back_once_per_connection():
    probe = Probe(interval=0.5)
    assert probe.due(10.0) is None  # not connected yet
    probe.connected("p1")
    assert probe.due(10.0) == "p1"
    assert probe.due(10.2) is None
    assert probe.due(10.5) == "p1"

    assert not probe.came_back("someone else's")
    assert probe.came_back("p1")
    assert not probe.came_back("p1")  # a second copy in flight
    assert probe.due(11.0) is None

    probe.connected("p2")  # the receiver reconnected
    assert probe.due(11.1) == "p2"
    assert not probe.came_back("p1") and probe.came_back("p2")


def test_the_worker_table_goes_at_once_when_a_worker_comes_or_goes_else_once_a_second():
    table = TableReports(interval=1.0)
    assert table.due(10.0)             # the first report: the counters from the start
    assert not table.due(10.1)         # nothing changed

    assert not table.changed(10.2, came_or_went=False)  # only a heartbeat moved
    assert not table.due(10.5)
    assert table.due(11.0)

    assert table.changed(11.1, came_or_went=True)       # sent now
    assert not table.due(12.5)                          # and nothing left to send
    table.changed(12.6, came_or_went=False)
    assert table.due(12.6)                              # a second after the last report


def test_silent_workers_are_looked_for_twice_a_second_and_go_offline_at_the_first_look():
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.worker_event({"type": "worker-online", "hostname": "w@a", "timestamp": 1000.0,
                         "freq": 2.0}, now=1000.0)
    looks = Every(EXPIRY_CHECK_INTERVAL)
    looked, gone = [], []
    for tick in range(100):  # the receiver's turns, 100 ms apart
        now = 1000.0 + tick / 10
        if looks.due(now):
            looked.append(now)
            gone += [(now, item.message["type"]) for item in mapper.expire(now)]

    assert looked[:3] == [1000.0, 1000.5, 1001.0]
    assert gone == [(1004.5, "worker_offline")]  # silent for over two heartbeat intervals


def test_a_worker_silent_during_a_broker_outage_gets_a_fresh_window_on_reconnect():
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.worker_event({"type": "worker-online", "hostname": "w@a", "timestamp": 1000.0,
                         "freq": 2.0}, now=1000.0)
    mapper.reconnected(now=1030.0)  # no events for 30 s: the bridge was cut off

    assert mapper.expire(1033.0) == []
    assert [item.message["type"] for item in mapper.expire(1034.5)] == ["worker_offline"]
