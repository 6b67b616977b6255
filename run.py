"""Start the notification server: `python run.py [--demo] [--port 8000] ...`.

With no REDIS_URL, a private redis-server is started (and stopped on exit)
and used for events and as the Celery broker. `--demo` also starts a Celery
worker on `notify_server.dev.demo` and a producer of demo tasks.

Exit codes: 0 after a clean shutdown; 2 for a setting that is not allowed or
an address it cannot listen on (one line on stderr, no traceback); 130 for a
Ctrl-C before the server runs (one line).
"""

import os
import signal
import sys

STARTUP_INTERRUPTED = "notify-server: interrupted during start-up"


def _interrupted_while_loading(signum, frame) -> None:
    # Ctrl-C while the imports below load (about a second): no traceback from
    # deep inside them, the same line and code as later in start-up.
    sys.stderr.write(STARTUP_INTERRUPTED + "\n")
    os._exit(130)


if __name__ == "__main__":  # not when a test imports this module
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import asyncio  # noqa: E402 (after the handler: these imports take the time)
import dataclasses  # noqa: E402
import errno  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Callable, List, NoReturn  # noqa: E402

from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.netutil import bind_sockets  # noqa: E402

import settings as settings_module  # noqa: E402
from handlers import make_application  # noqa: E402
from notify_server import children  # noqa: E402
from notify_server.dev.embedded_redis import EmbeddedRedis  # noqa: E402
from notify_server.server import NotifyServer  # noqa: E402

log = logging.getLogger("notify_server")

# Seconds the demo worker gets for Celery's cold shutdown before its process
# group (pool children included) is killed: it is a demo, its tasks may be lost.
DEMO_GRACE = 1.0


async def serve(settings: settings_module.Settings, sockets: List[socket.socket],
                on_stopping: Callable[[], None]) -> None:
    """Serve on the bound `sockets` until SIGINT or SIGTERM, then shut down
    cleanly; `on_stopping()` is called as soon as a signal arrives."""
    instance = f"{socket.gethostname()}:{sockets[0].getsockname()[1]}:{os.getpid()}"
    server = NotifyServer(settings.server_config(instance))
    application = make_application(server, allowed_origins=settings.allowed_origins,
                                   max_message_size=settings.max_message_size,
                                   metrics_token=settings.metrics_token)
    # Tornado's idle_connection_timeout is also how long a request's headers may take.
    http_server = HTTPServer(application, xheaders=settings.xheaders,
                             max_header_size=settings.max_header_size,
                             idle_connection_timeout=settings.header_timeout)
    await server.start()
    http_server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    warn_if_open(settings, sockets)
    print(f"notify-server listening on http://{settings.host}:{port} "
          f"(WebSocket ws://{settings.host}:{port}/ws/tasks/)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    on_stopping()
    log.info("shutting down: closing %d client(s)", server.health()["clients"])
    http_server.stop()
    await server.stop(settings.shutdown_timeout)
    log.info("stopped")


def warn_if_open(settings: settings_module.Settings, sockets: List[socket.socket]) -> None:
    """Say which mode serves; warn when open mode listens beyond loopback."""
    if settings.auth_secret:
        log.info("token mode: clients need a JWT signed with one of %d secret(s)",
                 len(settings.auth_secret))
        return
    exposed = sorted({s.getsockname()[0] for s in sockets
                      if not ipaddress.ip_address(s.getsockname()[0].split("%")[0]).is_loopback})
    if exposed:
        log.warning("open mode on %s: any client that reaches this address sees every task; "
                    "set NOTIFY_AUTH_SECRET to require tokens", ", ".join(exposed))


def listen(settings: settings_module.Settings) -> List[socket.socket]:
    """Bind the listening sockets; raises SystemExit(2) with one line on failure."""
    try:
        return bind_sockets(settings.port, settings.host)
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            why = ("the address is already in use (another notify-server?); stop that process "
                   "or choose another port with --port or NOTIFY_PORT")
        elif exc.errno == errno.EACCES:
            why = "permission denied; ports below 1024 need privileges, choose another with --port"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host ({exc.strerror}); check --host or NOTIFY_HOST"
        else:
            why = f"{exc.strerror or exc}; check --host and --port"
        fail(f"cannot listen on {where}: {why}")


def fail(message: str) -> NoReturn:
    print(f"run.py: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def start_demo(redis_url: str, prefix: str, owner_arg: str) -> list:
    """Start a demo Celery worker and a task producer; returns their processes.

    The worker has the hook installed and sends Celery's events (-E): with the
    bridge on (`--demo` turns it on) both paths write, each transition once."""
    env = {**os.environ, "REDIS_URL": redis_url or "", "NOTIFY_PREFIX": prefix,
           "NOTIFY_OWNER_ARG": owner_arg}
    worker = children.start(
        [sys.executable, "-m", "celery", "-A", "notify_server.dev.demo", "worker", "-E",
         "--loglevel", "WARNING", "--concurrency", "2", "--hostname", "demo@%h"], env=env)
    producer = children.start([sys.executable, "-m", "notify_server.dev.demo", "produce"], env=env)
    return [worker, producer]


def stop_demo(processes: list) -> None:
    """Ask the demo worker for Celery's cold shutdown (SIGQUIT: its running demo
    tasks are abandoned, no warm wait) and the producer to stop."""
    for process, signum in zip(processes, (signal.SIGQUIT, signal.SIGTERM)):
        if process.poll() is None:
            process.send_signal(signum)


def wait_or_kill(processes: list, deadline: float) -> None:
    """Wait for each process until `deadline`, then SIGKILL its process group
    (each child leads its own, see `children.start`)."""
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt from here on
    try:
        settings = settings_module.load(sys.argv[1:] if argv is None else argv, os.environ)
    except settings_module.SettingError as exc:
        fail(str(exc))
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sockets = listen(settings)
    embedded = None
    demo = []
    demo_deadline = [float("inf")]  # when shutdown began, plus DEMO_GRACE

    def stopping() -> None:
        demo_deadline[0] = time.monotonic() + DEMO_GRACE
        stop_demo(demo)

    try:
        if not settings.redis_url and not settings.redis_sentinels:
            embedded = EmbeddedRedis()
            url = embedded.start()
            settings = dataclasses.replace(settings, redis_url=url)
            print(f"embedded Redis at {url}; start workers with REDIS_URL={url}", flush=True)
        if settings.demo:
            settings = dataclasses.replace(settings, celery_events=True)
            demo = start_demo(settings.redis_url, settings.prefix, settings.owner_arg)
        asyncio.run(serve(settings, sockets, stopping))
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers exist (start-up waits up to 5 s for Redis).
        print(STARTUP_INTERRUPTED, file=sys.stderr, flush=True)
        return 130
    finally:
        stop_demo(demo)
        wait_or_kill(demo, min(demo_deadline[0], time.monotonic() + DEMO_GRACE))
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
