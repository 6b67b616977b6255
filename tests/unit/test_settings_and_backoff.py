import pytest

import settings
from notify_server.backoff import Backoff


def test_flags_win_over_environment_over_defaults():
    loaded = settings.load(["--port", "9001"], {"NOTIFY_PORT": "9000", "NOTIFY_POLL_INTERVAL": "5",
                                                "REDIS_URL": "redis://r:1/0"})
    assert loaded.port == 9001 and loaded.poll_interval == 5.0
    assert loaded.redis_url == "redis://r:1/0" and loaded.effective_broker_url == "redis://r:1/0"
    assert settings.load([], {}).port == 8000


def test_every_setting_has_a_flag_and_a_field():
    fields = set(settings.Settings.__dataclass_fields__)
    assert {s.name for s in settings.SETTINGS} == fields


def test_a_malformed_variable_is_a_clear_usage_error(capsys):
    with pytest.raises(SystemExit):
        settings.load([], {"NOTIFY_PORT": "eighty"})
    assert "NOTIFY_PORT" in capsys.readouterr().err


def test_backoff_grows_to_its_cap_with_full_jitter_and_resets():
    backoff = Backoff(base=0.1, cap=1.0, uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1
