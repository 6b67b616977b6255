"""deploy/: the systemd units, their environment file and nginx agree with the server."""

import re
import shlex
from pathlib import Path

import settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
WORKER_VARIABLES = {"NOTIFY_REDIS_URL", "NOTIFY_PREFIX", "NOTIFY_SUBJECT_ARG", "NOTIFY_OWNER_ARG",
                    "NOTIFY_HISTORY_MAXLEN", "CELERY_APP"}


def unit_value(unit: str, key: str) -> str:
    [value] = re.findall(rf"^{key}=(.*)$", (DEPLOY / unit).read_text(), flags=re.M)
    return value


def environment_file() -> dict:
    lines = (DEPLOY / "notify-server.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_server_unit_runs_each_instance_on_loopback_at_its_port_trusting_nginx():
    argv = shlex.split(unit_value("notify-server@.service", "ExecStart").replace("%i", "8001"))
    assert argv[1] == "run.py"

    loaded = settings.load(argv[2:], environment_file())

    assert (loaded.host, loaded.port, loaded.xheaders) == ("127.0.0.1", 8001, True)
    assert unit_value("notify-server@.service", "KillSignal") == "SIGTERM"
    assert float(unit_value("notify-server@.service", "TimeoutStopSec")) > loaded.shutdown_timeout


def test_environment_file_sets_only_variables_the_server_or_worker_reads():
    known = {setting.env for setting in settings.SETTINGS} | WORKER_VARIABLES
    variables = environment_file()
    assert set(variables) <= known, set(variables) - known
    assert "${CELERY_APP}" in unit_value("notify-worker.service", "ExecStart")
    assert "CELERY_APP" in variables


def test_nginx_keeps_idle_sockets_longer_than_a_ping_round_trip():
    conf = (DEPLOY / "nginx.conf").read_text()
    active = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    defaults = settings.Settings()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        [seconds] = re.findall(rf"{directive} (\d+)s;", active)
        assert int(seconds) > defaults.ping_interval + defaults.ping_timeout, directive
