"""settings.py: each setting is declared once; the flags, the variables, the
defaults, the core's config and the README's table all come from that."""

import dataclasses
import json

import pytest

import settings
from notify_server.config import ServerConfig
from notify_server.protocol.names import (DEFAULT_HISTORY_MAXLEN, DEFAULT_OWNER_ARG, DEFAULT_PREFIX,
                                          DEFAULT_SUBJECT_ARG)

# What only the web layer (run.py, handlers) reads, and what reaches the core by a rule.
WEB_ONLY = {"host", "port", "allowed_origins", "max_message_size", "metrics_token",
            "max_header_size", "header_timeout", "shutdown_timeout", "xheaders", "log_level",
            "demo"}
BY_RULE = {"redis_master", "broker_url"}


def config_value(config: ServerConfig, path: str):
    for name in path.split("."):
        config = getattr(config, name)
    return config


def as_raw(value) -> str:
    """A value as it is written in a variable."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


def test_flags_are_the_declared_settings_and_switches_have_a_no_form():
    parser = settings.build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    expected = {"-h", "--help"} | {setting.flag for setting in settings.SETTINGS} | {
        "--no-" + setting.flag[2:] for setting in settings.SETTINGS
        if setting.parse is settings._bool}
    assert flags == expected
    assert settings.load(["--no-xheaders"], {"NOTIFY_XHEADERS": "1"}).xheaders is False


def test_help_names_each_settings_variable_and_default():
    text = " ".join(settings.build_parser().format_help().split())
    for setting in settings.SETTINGS:
        assert f"(env {setting.env}, default: " in text, setting.env
    assert "(env NOTIFY_PORT, default: 8000)" in text
    assert "](#" not in text and "`" not in text  # the README's Markdown is left out


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda setting: setting.name)
def test_each_default_passes_its_rule_through_the_variable_and_the_flag(setting):
    default = getattr(settings.Settings(), setting.name)
    if isinstance(default, bool):
        argv = [setting.flag if default else "--no-" + setting.flag[2:]]
    else:
        argv = [setting.flag, as_raw(default)]
    assert getattr(settings.load([], {setting.env: as_raw(default)}), setting.name) == default
    assert getattr(settings.load(argv, {}), setting.name) == default


def test_a_setting_copied_to_the_core_takes_its_default_from_the_core_config():
    defaults, core = settings.Settings(), ServerConfig()
    for setting in settings.SETTINGS:
        if setting.to is not None:
            assert getattr(defaults, setting.name) == config_value(core, setting.to), setting.name
    assert (defaults.prefix, defaults.subject_arg, defaults.owner_arg, defaults.history_maxlen) \
        == (DEFAULT_PREFIX, DEFAULT_SUBJECT_ARG, DEFAULT_OWNER_ARG, DEFAULT_HISTORY_MAXLEN)


def test_only_web_settings_and_rule_bound_ones_keep_their_own_default():
    own = {setting.name for setting in settings.SETTINGS if setting.to is None}
    assert own == WEB_ONLY | BY_RULE


def test_a_setting_declares_either_its_core_field_or_its_own_default():
    with pytest.raises(TypeError):
        settings.Setting("port", "NOTIFY_PORT", settings._port, "port", to="leader_ttl",
                         default=1.0)
    with pytest.raises(TypeError):
        settings.Setting("port", "NOTIFY_PORT", settings._port, "port")
    with pytest.raises(KeyError):
        settings.config_field("celery.no_such_field")


def test_server_config_carries_every_copied_setting_to_its_field():
    loaded = settings.load(["--poll-interval", "7", "--max-subscribe", "3", "--prefix", "app",
                            "--auth-secret", "s" * 32, "--leader-ttl", "9"],
                           {"REDIS_URL": "redis://r:1/0", "NOTIFY_PING_TIMEOUT": "4"})
    config = loaded.server_config("host:1:2")
    for setting in settings.SETTINGS:
        if setting.to is not None and setting.name != "celery_events":  # a rule, below
            assert config_value(config, setting.to) == getattr(loaded, setting.name), setting.name
    assert config.instance == "host:1:2" and config.redis.keys.events_channel == "app:events"


def test_enable_events_turns_the_bridge_on():
    on = settings.load(["--enable-events"], {"REDIS_URL": "redis://r:1/0"}).server_config("i")
    off = settings.load([], {"REDIS_URL": "redis://r:1/0"}).server_config("i")
    bridge = settings.load(["--celery-events"], {"REDIS_URL": "redis://r:1/0"}).server_config("i")
    assert (on.celery.events, on.celery.enable_events) == (True, True)
    assert (off.celery.events, off.celery.enable_events) == (False, False)
    assert (bridge.celery.events, bridge.celery.enable_events) == (True, False)


def test_redis_master_counts_only_behind_sentinels_and_the_broker_follows_redis():
    plain = settings.load([], {"REDIS_URL": "redis://r:1/0"}).server_config("i")
    assert plain.redis.master is None and plain.celery.broker_url == "redis://r:1/0"
    guarded = settings.load(["--redis-sentinels", "s1:26379,s2:26379", "--redis-master", "m"],
                            {"REDIS_URL": "redis://:pw@x/3"}).server_config("i")
    assert guarded.redis.master == "m" and guarded.broker_master == "m"
    assert guarded.celery.broker_url == "sentinel://:pw@s1:26379/3;sentinel://:pw@s2:26379/3"
    own = settings.load([], {"REDIS_URL": "redis://r:1/0", "CELERY_BROKER_URL": "amqp://b//"})
    assert own.server_config("i").celery.broker_url == "amqp://b//"


def test_config_table_has_one_row_per_setting_with_its_default_as_written():
    rows = settings.config_table().splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [
        [f"| `{setting.env}`", f"`{setting.flag}`"] for setting in settings.SETTINGS]
    shown = {row.split(" | ")[0]: row.split(" | ")[2] for row in rows}
    assert shown["| `NOTIFY_PORT`"] == "`8000`" and shown["| `REDIS_URL`"] == "(unset)"
    assert shown["| `NOTIFY_QUEUES`"] == "`celery`" and shown["| `NOTIFY_DEMO`"] == "off"
    assert shown["| `NOTIFY_BROKER_TRANSPORT_OPTIONS`"] == "(unset)"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.Settings().port = 1
