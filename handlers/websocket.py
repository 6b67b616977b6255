"""WebSocket: `/ws/tasks/`, the seed's socket (docs/protocol.md, "WebSocket")."""

import asyncio
import logging
import time

import tornado.web
import tornado.websocket
from redis.exceptions import RedisError

from notify_server.access.auth import AuthError, bearer_token
from notify_server.edge.connection import OPEN
from notify_server.protocol import close_codes, messages
from notify_server.protocol.messages import ProtocolError
from notify_server.server import RECORD_READ_TIMEOUT

from .envelope import log_exception, write_envelope
from .origin import origin_allowed

log = logging.getLogger(__name__)


class TaskSocketHandler(tornado.websocket.WebSocketHandler):
    """One client socket.

    Before the upgrade: over a connection limit the request gets 503 (all
    sockets) or 429 (this address) in the JSON envelope; a refused Origin
    gets 403. In token mode the token (`?token=` or `Authorization: Bearer`)
    is checked once the socket is open: without a valid one the socket is
    closed at once with 4001 and the reason, and nothing else is sent.

    On open the client gets the `queue_status` it may see, then every task
    event of its scope (or, after `?last_event_id=ID`, the history after ID,
    a `queue_status` and then the live stream). Actions: `get_queue_status`,
    `ping`, `subscribe`, `resume`, `refresh`, `get_task`, at most `action_rate` per
    second with bursts of `action_burst`: over it the reply is
    `rate_limited`, and a client that keeps going is closed with 1008. Bad
    frames get an `error` reply and the socket stays open. A frame over
    `max_message_size` closes it with 1009 (Tornado does this); the
    `Connection` closes a slow client with 4008 and a peer that misses a
    pong with 1001. What may still be written is decided by the
    `Connection` alone.
    """

    def initialize(self, server, allowed_origins) -> None:
        self.server = server
        self.allowed_origins = allowed_origins
        self.connection = None
        self.session = None
        self.bucket = None
        self.token = self.last_event_id = None
        self.release_slot = None  # a refused socket's hold on its address's connection slot

    async def get(self, *args, **kwargs) -> None:
        refusal = self.server.admission.refusal(self.request.remote_ip)
        if refusal is not None:
            write_envelope(self, *refusal, None)
            return
        # Read before the upgrade: a query argument that is not UTF-8 is a 400
        # here, not an exception in `open` after the 101.
        try:
            self.token = (self.get_query_argument("token", None)
                          or bearer_token(self.request.headers.get("Authorization")))
            self.last_event_id = self.get_query_argument("last_event_id", None)
        except tornado.web.HTTPError:
            write_envelope(self, 400, "query arguments must be UTF-8", None)
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.allowed_origins)

    def open(self) -> None:
        # Tornado turns Nagle back on after the upgrade; small frames must not wait for ACKs.
        self.set_nodelay(True)
        try:
            scope = self.server.admission.authenticate(self.token)
        except AuthError as exc:
            # Until its close handshake ends it still counts against its address:
            # sockets without a token cannot be piled up past the limit either.
            self.release_slot = self.server.admission.hold_slot(self.request.remote_ip)
            self.close(close_codes.UNAUTHORIZED, str(exc))
            return
        self.bucket = self.server.admission.action_bucket()
        self.connection, self.session = self.server.connect(
            self.ws_connection.stream, self.close, self.request.remote_ip, scope)
        try:
            self._start()
        except Exception:
            # Tornado would drop the stream without `on_close`: the socket would stay counted.
            log.exception("opening a client socket failed; closing it with %d",
                          close_codes.INTERNAL_ERROR)
            self.connection.close(*close_codes.FAILED)

    def _start(self) -> None:
        if self.last_event_id is None:
            self.server.join(self.connection, self.session)
            return
        try:
            action = messages.parse_resume_argument(self.last_event_id)
        except ProtocolError as exc:
            self.server.join(self.connection, self.session)
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return
        self.server.start_resume(self.connection, self.session, action.last_event_id)

    def on_message(self, frame):
        # Refused in `open`, or closing: Tornado still hands over what arrives
        # until the client's close frame; none of it is acted on or counted.
        if self.connection is None or self.connection.state is not OPEN:
            return None
        if not self.bucket.take(time.monotonic()):
            return self._rate_limited()
        return self._handle(frame)

    def _handle(self, frame):
        try:
            return self._act(messages.parse_action(frame, self.server.config.access.max_subscribe))
        except ProtocolError as exc:
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return None

    def _rate_limited(self):
        if self.bucket.flooding:
            self.server.admission.count_refused("flood")
            stream = self.ws_connection.stream  # Tornado forgets it on close
            self.connection.close(*close_codes.RATE_LIMIT)
            return _until_closed(stream)
        self.server.admission.count_refused("rate")
        self._reply(messages.ERROR, messages.frame(messages.error(
            messages.RATE_LIMITED, f"more than {self.bucket.rate:g} actions per second; "
                                   "slow down or the socket is closed")))

    def _act(self, action: messages.Action):
        """Run one action; an awaitable for those that read Redis (Tornado
        awaits it before the next frame, so replies keep the actions' order)."""
        if action.name == "get_queue_status":
            self._reply(messages.QUEUE_STATUS, self.server.queue_status_frame(self.session.scope))
        elif action.name == "ping":
            self._reply(messages.PONG, messages.frame(messages.pong(time.time())))
        elif action.name == "subscribe":
            return self._subscribe(action)
        elif action.name == "get_task":
            return self._get_task(action.task_id)
        elif action.name == "resume":
            self.server.start_resume(self.connection, self.session, action.last_event_id)
        elif action.name == "refresh":
            scope, reply = self.server.admission.refresh(self.connection, self.session.scope,
                                                         action.token)
            self.server.hub.rescope(self.session, scope)
            self._reply(messages.REFRESHED, reply)
        return None

    async def _subscribe(self, action: messages.Action) -> None:
        try:
            await self.server.subscribe(self.session, action.task_ids, action.avids)
        except (RedisError, OSError) as exc:
            self._unavailable(exc)

    async def _get_task(self, task_id: str) -> None:
        try:
            record = await asyncio.wait_for(
                self.server.records.find(task_id, self.session.scope), RECORD_READ_TIMEOUT)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._unavailable(exc)
            return
        if record is None:
            self._reply(messages.ERROR, messages.frame(messages.error(
                messages.NOT_FOUND, "no record of this task (unknown, past its retention, "
                                    "or not yours)")))
        else:
            self._reply(messages.TASK, messages.frame(messages.task(record)))

    def _unavailable(self, exc: Exception) -> None:
        log.warning("task records could not be read for a socket: %s", exc or type(exc).__name__)
        self._reply(messages.ERROR, messages.frame(messages.error(
            messages.UNAVAILABLE, "task records cannot be read now (Redis); live events "
                                  "still arrive, try again")))

    def on_close(self) -> None:
        if self.connection is not None:
            self.connection.lost()
        if self.release_slot is not None:
            self.release_slot()
            self.release_slot = None

    def on_pong(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.pong()

    def on_ping(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.tornado_wrote()  # Tornado has just written its pong

    def _reply(self, kind: str, frame: bytes) -> None:
        self.connection.write(frame)
        self.server.metrics.sent_of(kind).inc()

    def log_exception(self, typ, value, tb) -> None:
        log_exception(self, typ, value, tb)


def _until_closed(stream) -> asyncio.Future:
    """A future done when `stream` closes. Returned from `on_message`, Tornado
    awaits it before it reads the next frame: a flood already in the receive
    buffer is not even parsed (it would hold the event loop for every other
    client), and Tornado drops the connection when its close handshake times out."""
    closed = asyncio.get_running_loop().create_future()
    stream.set_close_callback(lambda: closed.done() or closed.set_result(None))
    if stream.closed():
        closed.set_result(None)
    return closed
