"""Baseline: the plainest Tornado fan-out, for comparison with notify-server.

One redis.asyncio subscription to the events channel; every message is passed,
as received, to `write_message` of every open socket. No parsing, no resume,
no filters, no slow-client handling.

    python tornado_baseline.py --port N --redis-url URL [--channel notify:events]
"""

import argparse
import asyncio
import signal

import tornado.web
import tornado.websocket
from redis.asyncio import Redis

CLIENTS = set()


class Socket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def open(self):
        CLIENTS.add(self)

    def on_close(self):
        CLIENTS.discard(self)


async def relay(redis_url: str, channel: str) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=None)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        for client in tuple(CLIENTS):
            try:
                client.write_message(message["data"])
            except tornado.websocket.WebSocketClosedError:
                CLIENTS.discard(client)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default="notify:events")
    args = parser.parse_args()
    tornado.web.Application([(r"/ws/tasks/", Socket)]).listen(args.port, args.host)
    task = asyncio.ensure_future(relay(args.redis_url, args.channel))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"tornado baseline listening on {args.host}:{args.port}", flush=True)
    await stop.wait()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
