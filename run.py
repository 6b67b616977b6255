"""Start the notification server: `python run.py [--demo] [--port 8000] ...`.

With no REDIS_URL, a private redis-server is started (and stopped on exit)
and used for events and as the Celery broker. `--demo` also starts a Celery
worker on `notify_server.demo` and a producer of demo tasks.
"""

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import settings as settings_module
from notify_server import children
from notify_server.embedded_redis import EmbeddedRedis
from notify_server.server import NotifyServer

log = logging.getLogger("notify_server")


async def serve(settings: settings_module.Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    server = NotifyServer(settings)
    http_server = HTTPServer(server.application(), xheaders=settings.xheaders)
    sockets = bind_sockets(settings.port, settings.host)
    await server.start()
    http_server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"notify-server listening on http://{settings.host}:{port} "
          f"(WebSocket ws://{settings.host}:{port}/ws/tasks/)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: closing %d client(s)", len(server.hub))
    http_server.stop()
    await server.stop(settings.shutdown_timeout)
    log.info("stopped")


def start_demo(redis_url: str, prefix: str) -> list:
    """Start a demo Celery worker and a task producer; returns their processes."""
    env = {**os.environ, "REDIS_URL": redis_url, "NOTIFY_PREFIX": prefix}
    worker = children.start(
        [sys.executable, "-m", "celery", "-A", "notify_server.demo", "worker",
         "--loglevel", "WARNING", "--concurrency", "2", "--hostname", "demo@%h"], env=env)
    producer = children.start([sys.executable, "-m", "notify_server.demo", "produce"], env=env)
    return [worker, producer]


def stop_processes(processes: list) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None) -> int:
    settings = settings_module.load(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedded = None
    children = []
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis()
            url = embedded.start()
            settings = dataclasses.replace(settings, redis_url=url)
            print(f"embedded Redis at {url}; start workers with REDIS_URL={url}", flush=True)
        if settings.demo:
            children = start_demo(settings.redis_url, settings.prefix)
        asyncio.run(serve(settings))
    finally:
        stop_processes(children)
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
