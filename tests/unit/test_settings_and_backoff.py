import pytest

import settings
from notify_server.redis_io.backoff import Backoff


def test_flags_win_over_environment_over_defaults():
    loaded = settings.load(["--port", "9001"], {"NOTIFY_PORT": "9000", "NOTIFY_POLL_INTERVAL": "5",
                                                "REDIS_URL": "redis://r:1/0"})
    assert loaded.port == 9001 and loaded.poll_interval == 5.0
    assert loaded.redis_url == "redis://r:1/0" and loaded.effective_broker_url == "redis://r:1/0"
    assert settings.load([], {}).port == 8000


def test_every_setting_has_a_flag_and_a_field():
    fields = set(settings.Settings.__dataclass_fields__)
    assert {s.name for s in settings.SETTINGS} == fields


@pytest.mark.parametrize("argv, environ, says", [
    ([], {"NOTIFY_PORT": "eighty"}, "NOTIFY_PORT='eighty': must be an integer from 0 to 65535"),
    (["--port", "70000"], {}, "--port='70000': must be an integer from 0 to 65535"),
    ([], {"NOTIFY_PING_TIMEOUT": "-3"}, "NOTIFY_PING_TIMEOUT='-3': must be a number of seconds "
                                        "greater than 0"),
    ([], {"NOTIFY_MAX_CLIENT_BUFFER": "-1"}, "NOTIFY_MAX_CLIENT_BUFFER='-1': must be a whole "
                                             "number of bytes greater than 0"),
    ([], {"NOTIFY_MAX_MESSAGE_SIZE": "0"}, "NOTIFY_MAX_MESSAGE_SIZE='0': must be a whole"),
    ([], {"NOTIFY_POLL_INTERVAL": "nan"}, "NOTIFY_POLL_INTERVAL='nan': must be a number"),
    ([], {"NOTIFY_PING_INTERVAL": "5", "NOTIFY_PING_TIMEOUT": "10"},
     "NOTIFY_PING_TIMEOUT='10': must be at most the ping interval (5 s)"),
    (["--ping-timeout", "30"], {}, "--ping-timeout='30': must be at most the ping interval"),
    ([], {"NOTIFY_PING_INTERVAL": "5"}, "NOTIFY_PING_INTERVAL='5': must be at least the ping "
                                        "timeout (10 s), or 0 to disable pings"),
    ([], {"NOTIFY_PORT": "8_000"}, "NOTIFY_PORT='8_000': must be an integer"),
    ([], {"CELERY_BROKER_URL": "localhost"}, "CELERY_BROKER_URL='localhost': must be a broker"),
    ([], {"NOTIFY_LOG_LEVEL": "chatty"}, "NOTIFY_LOG_LEVEL='chatty': must be one of DEBUG"),
    ([], {"NOTIFY_ALLOWED_ORIGINS": " , "}, "NOTIFY_ALLOWED_ORIGINS=' , ': must be * or"),
    ([], {"NOTIFY_DEMO": "maybe"}, "NOTIFY_DEMO='maybe': must be one of 1, true"),
    ([], {"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379': must be a redis://"),
    ([], {"NOTIFY_BROKER_TRANSPORT_OPTIONS": "{sep: 1}"},
     "NOTIFY_BROKER_TRANSPORT_OPTIONS='{sep: 1}': must be a JSON object"),
    (["--broker-transport-options", "[0, 3]"], {},
     "--broker-transport-options='[0, 3]': must be a JSON object"),
])
def test_a_value_that_is_not_allowed_is_refused_with_its_name_value_and_rule(argv, environ, says):
    with pytest.raises(settings.SettingError) as refused:
        settings.load(argv, environ)
    assert str(refused.value).startswith(says)
    assert "\n" not in str(refused.value)


def test_queues_default_to_celerys_and_transport_options_to_none():
    loaded = settings.load([], {})
    assert loaded.queues == ("celery",) and loaded.broker_transport_options == {}
    config = settings.load(["--queues", " video, celery,,video "], {
        "NOTIFY_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "app:", "sep": ":"}',
    }).server_config("test:0:1")
    assert config.celery.queues == ("video", "celery")
    assert config.celery.broker_transport_options == {"global_keyprefix": "app:", "sep": ":"}
    assert settings.load([], {"NOTIFY_QUEUES": ""}).queues == ()


def test_ping_interval_zero_disables_heartbeats_whatever_the_timeout():
    loaded = settings.load([], {"NOTIFY_PING_INTERVAL": "0"})
    assert loaded.ping_interval == 0 and loaded.ping_timeout == 10.0


def test_backoff_grows_to_its_cap_with_full_jitter_and_resets():
    backoff = Backoff(base=0.1, cap=1.0, uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1
