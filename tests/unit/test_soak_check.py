"""bench/soakcheck.py: the soak's check of a resuming client's events (the instrument only;
no soak runs in the test suite)."""

from bench.soakcheck import RESYNC, check_follower, follower_ok, stream_key

EXPECTED = ["100-0", "100-1", "101-0", "150-0", "200-0", "1000-0"]


def test_stream_ids_compare_by_time_then_sequence_not_as_text():
    assert stream_key("99-5") < stream_key("100-0") < stream_key("100-1")
    assert sorted(["1000-0", "200-0", "99-0"], key=stream_key) == ["99-0", "200-0", "1000-0"]


def test_every_event_once_in_order_passes():
    result = check_follower(list(EXPECTED), EXPECTED)
    assert result == {"received": 6, "duplicates": 0, "out_of_order": 0, "missing": 0,
                      "lost_to_resync": 0, "resyncs": 0, "unexpected": 0}
    assert follower_ok(result)


def test_the_coverage_starts_at_the_first_event_received():
    assert follower_ok(check_follower(EXPECTED[2:], EXPECTED))


def test_a_duplicate_an_inversion_a_gap_or_an_unknown_id_fails():
    duplicated = check_follower(["100-0", "100-1", "100-1"] + EXPECTED[2:], EXPECTED)
    assert duplicated["duplicates"] == 1 and not follower_ok(duplicated)
    swapped = check_follower(["100-0", "101-0", "100-1"] + EXPECTED[3:], EXPECTED)
    assert swapped["out_of_order"] == 1 and not follower_ok(swapped)
    gap = check_follower(["100-0", "100-1", "150-0", "200-0", "1000-0"], EXPECTED)
    assert gap["missing"] == 1 and not follower_ok(gap)
    unknown = check_follower(EXPECTED + ["2000-0"], EXPECTED)
    assert unknown["unexpected"] == 1 and not follower_ok(unknown)


def test_events_lost_inside_a_resync_gap_are_counted_apart_and_pass():
    result = check_follower(["100-0", "100-1", RESYNC, "200-0", "1000-0"], EXPECTED)
    assert (result["lost_to_resync"], result["missing"], result["resyncs"]) == (2, 0, 1)
    assert follower_ok(result)


def test_after_a_resync_events_must_still_be_in_order_and_not_repeated():
    repeated = check_follower(["100-0", "100-1", RESYNC, "100-1", "101-0"], EXPECTED[:3])
    assert repeated["duplicates"] == 1 and not follower_ok(repeated)


def test_a_resync_with_nothing_after_it_loses_the_rest_to_it():
    result = check_follower(["100-0", "100-1", RESYNC], EXPECTED)
    assert (result["lost_to_resync"], result["missing"]) == (4, 0)


def test_nothing_received_fails():
    assert not follower_ok(check_follower([], EXPECTED))
