"""The worker side installs on its own: a wheel of `notify_server` in a fresh
virtualenv with only celery and redis, and a worker of a user's app from that
virtualenv whose task events reach a WebSocket client of the real server."""

import email.parser
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import orjson
import pytest

from notify_server.protocol import task_events as events
from notify_server.protocol.stream import parse_event
from tests.support.client import WsClient, of_task
from tests.support.processes import ROOT, Child
from tests.support.tasks import unique_avid

SERVER_ONLY = ("tornado", "prometheus_client", "jwt")
REPOSITORY_MODULES = ("settings", "handlers", "run", "tests", "bench")

# A user's Celery app, in its own directory, as README's "one line" shows it.
USER_APP = '''\
import os

from celery import Celery
from notify_server.worker import hook as worker
from notify_server.worker import install

print(f"notify_server.worker from {worker.__file__}", flush=True)

app = Celery("userapp", broker=os.environ["REDIS_URL"])
notifier = install(app)


@app.task(name="userapp.greet")
def greet(avid):
    notifier.progress(1, 2, "halfway")
    return f"hello {avid}"
'''


def run(*argv, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command to completion; fails the test with its output if it fails."""
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def isolated_python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` run by the venv's python with nothing but its own site-packages on the
    path (-I: no PYTHONPATH, no current directory, no user site-packages)."""
    return subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def pins() -> set:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel --no-deps` builds from a copy of this checkout.

    The copy holds what a clone would (tracked files, plus new ones git does
    not ignore) and nothing of a build: the tree itself gets no build/ or
    egg-info, and no stale build/lib can leak into the wheel.
    """
    work = tmp_path_factory.mktemp("wheel")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not a tracked file deleted in the working tree
            target = work / "checkout" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", work / "dist",
        work / "checkout")
    [built] = (work / "dist").glob("notify_server-*.whl")
    return built


@pytest.fixture(scope="module")
def worker_venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtualenv with the wheel and its base dependencies, nothing else."""
    venv = tmp_path_factory.mktemp("worker-venv")
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    return venv


@pytest.fixture
def wheel_worker(worker_venv, tmp_path, redis_server):
    """A prefork worker of USER_APP, run by the venv's python from the app's own
    directory, on a queue of its own (the demo worker ignores it)."""
    (tmp_path / "userapp.py").write_text(USER_APP)
    queue = f"wheel-{uuid.uuid4().hex[:6]}"
    # Child starts processes in the repository: -I keeps that directory (and any
    # PYTHONPATH) off sys.path, and celery's --workdir imports the app from tmp_path.
    child = Child("worker-from-wheel",
                  [str(worker_venv / "bin" / "python"), "-I", "-u", "-m", "celery",
                   "--workdir", str(tmp_path), "-A", "userapp", "worker", "--loglevel", "INFO",
                   "--concurrency", "1", "--queues", queue, "--hostname", f"{queue}@localhost",
                   "--without-gossip", "--without-mingle"],
                  env={"REDIS_URL": redis_server.url, "NOTIFY_REDIS_URL": ""})
    try:
        child.wait_for_line(r"ready\.", timeout=60)
        yield child, queue
    finally:
        child.stop()


def test_wheel_holds_the_notify_server_package_with_its_data_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"notify_server"}
    package = ROOT / "notify_server"
    expected = {f"notify_server/{path.relative_to(package).as_posix()}"
                for path in [*package.glob("**/*.py"), package / "dashboard" / "index.html",
                             *(package / "dashboard" / "static").iterdir()]}
    assert expected <= names, sorted(expected - names)


def test_wheel_requires_celery_redis_hiredis_orjson_and_the_rest_only_for_the_server_extra(wheel):
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        requires = email.parser.Parser().parsestr(
            archive.read(metadata).decode()).get_all("Requires-Dist")

    base = {spec for spec in requires if ";" not in spec}
    server = {spec.split(";")[0].strip() for spec in requires if 'extra == "server"' in spec}
    assert base == {"celery[redis]==5.6.3", "redis==8.1.0", "hiredis==3.5.0", "orjson==3.13.0"}
    assert base | server == pins() and not base & server
    assert len(requires) == len(base) + len(server)


def test_worker_venv_has_the_pinned_celery_and_redis_and_nothing_of_the_server(
        worker_venv, tmp_path):
    versions = isolated_python(worker_venv, (
        "from importlib.metadata import version; import notify_server.worker; "
        "print(version('celery'), version('redis'), notify_server.worker.__file__)"), tmp_path)
    assert versions.returncode == 0, versions.stderr
    celery_version, redis_version, location = versions.stdout.split()
    assert (celery_version, redis_version) == ("5.6.3", "8.1.0")
    assert Path(location).is_relative_to(worker_venv)

    for module in (*SERVER_ONLY, *REPOSITORY_MODULES):
        imported = isolated_python(worker_venv, f"import {module}", tmp_path)
        assert imported.returncode != 0, f"{module} is importable in the worker venv"
        assert f"No module named '{module}'" in imported.stderr, imported.stderr


async def test_task_of_a_worker_installed_from_the_wheel_reaches_a_websocket_client(
        wheel_worker, worker_venv, server_port, producer):
    child, queue = wheel_worker
    location = child.wait_for_line(r"notify_server\.worker from (\S+)").group(1)
    assert Path(location).is_relative_to(worker_venv)
    client = await WsClient.connect(server_port)
    avid = unique_avid("WHEEL")

    task_id = producer.send_task("userapp.greet", args=[avid], queue=queue).id

    started = await client.wait_for(of_task(task_id, "task_started"))
    progress = await client.wait_for(of_task(task_id, "task_progress"))
    completed = await client.wait_for(of_task(task_id, "task_completed"))
    assert started["data"] == {"task_id": task_id, "avid": avid, "status": "started"}
    assert list(completed["data"]) == ["task_id", "avid", "status", "message"]
    assert completed["data"] == {"task_id": task_id, "avid": avid, "status": "success",
                                 "message": f"hello {avid}"}
    assert (progress["data"]["percent"], progress["data"]["message"]) == (50.0, "halfway")
    assert re.fullmatch(r"\d+-\d+", completed["id"])
    client.close()


@pytest.mark.parametrize("message", [
    events.task_started("t-1", "SSIS-950"),
    events.task_completed("t-1", 42, "ダウンロード完了 ✓"),
    events.task_failed("t-1", None, 'ValueError: "quoted" \\ back\nslash'),
    events.task_progress("t-1", "A", 3, 12, "3 of 12"),
    events.task_progress("t-1", "A", 0.25, 1.0, ""),
])
def test_worker_encoding_is_byte_for_byte_what_the_server_encodes_and_parses(message):
    encoded = events.encode_event(message)

    assert encoded == orjson.dumps(message)
    parsed = parse_event(encoded)
    assert (parsed.type, parsed.data) == (message["type"], message["data"])
    assert list(parsed.data) == list(message["data"])


def test_worker_encodes_a_non_finite_progress_as_null_which_the_server_accepts():
    message = events.task_progress("t-1", "A", float("nan"), float("inf"), "")

    parsed = parse_event(events.encode_event(message))

    assert (parsed.data["current"], parsed.data["total"]) == (None, None)
