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

    def initialize(self, server) -> None:
        # Tornado's own attributes are 27 once the socket is open; CPython
        # keeps an instance's attributes in a table shared by its class only
        # while there are at most 29 (beyond, each socket gets a dict of its
        # own, 1.3 KB more): so ours are two, the socket's state in slots.
        self.server = server
        self.socket = SocketState()

    def get(self, *args, **kwargs):
        # Not a coroutine: Tornado awaits the upgrade's coroutine returned
        # here, and no frame of ours stays suspended for the socket's lifetime.
        refusal = self.server.admission.refusal(self.request.remote_ip)
        if refusal is not None:
            write_envelope(self, *refusal, None)
            return None
        # Read before the upgrade: a query argument that is not UTF-8 is a 400
        # here, not an exception in `open` after the 101.
        try:
            self.socket.token = (self.get_query_argument("token", None)
                                 or bearer_token(self.request.headers.get("Authorization")))
            self.socket.last_event_id = self.get_query_argument("last_event_id", None)
        except tornado.web.HTTPError:
            write_envelope(self, 400, "query arguments must be UTF-8", None)
            return None
        return super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.settings["allowed_origins"])

    def open(self) -> None:
        # Tornado turns Nagle back on after the upgrade; small frames must not wait for ACKs.
        self.set_nodelay(True)
        socket = self.socket
        token, socket.token = socket.token, None
        try:
            scope = self.server.admission.authenticate(token)
        except AuthError as exc:
            # Until its close handshake ends it still counts against its address:
            # sockets without a token cannot be piled up past the limit either.
            socket.release_slot = self.server.admission.hold_slot(self.request.remote_ip)
            self.close(close_codes.UNAUTHORIZED, str(exc))
            return
        socket.bucket = self.server.admission.action_bucket()
        socket.connection, socket.session = self.server.connect(
            self.ws_connection.stream, self.close, self.request.remote_ip, scope)
        try:
            self._forget_upgrade()
            self._start()
        except Exception:
            # Tornado would drop the stream without `on_close`: the socket would stay counted.
            log.exception("opening a client socket failed; closing it with %d",
                          close_codes.INTERNAL_ERROR)
            self.socket.connection.close(*close_codes.FAILED)

    def _forget_upgrade(self) -> None:
        """Drop what Tornado keeps of the upgrade for the socket's whole life
        and nothing reads once it is open (about 2 KB a socket): the request's
        headers, arguments and body and its HTTP connection objects (detached
        since the 101, each with its finished request loop), and the headers
        of the 101, written already. Kept: the method, URI, path and client
        address that the logs name."""
        request = self.request
        # `clear`, not a new object: Tornado's `get`, suspended until the socket
        # closes, holds the same headers object in a local variable.
        request.headers.clear()
        request.arguments, request.query_arguments, request.body_arguments = {}, {}, {}
        request.files, request.body = {}, b""
        request.connection = request.server_connection = None
        self._headers.clear()

    def _start(self) -> None:
        socket = self.socket
        last_event_id, socket.last_event_id = socket.last_event_id, None
        if last_event_id is None:
            self.server.join(socket.connection, socket.session)
            return
        try:
            action = messages.parse_resume_argument(last_event_id)
        except ProtocolError as exc:
            self.server.join(socket.connection, socket.session)
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return
        self.server.start_resume(socket.connection, socket.session, action.last_event_id)

    def on_message(self, frame):
        # Refused in `open`, or closing: Tornado still hands over what arrives
        # until the client's close frame; none of it is acted on or counted.
        socket = self.socket
        if socket.connection is None or socket.connection.state is not OPEN:
            return None
        if not socket.bucket.take(time.monotonic()):
            return self._rate_limited()
        return self._handle(frame)

    def _handle(self, frame):
        try:
            return self._act(messages.parse_action(frame, self.server.config.access.max_subscribe))
        except ProtocolError as exc:
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return None

    def _rate_limited(self):
        bucket = self.socket.bucket
        if bucket.flooding:
            self.server.admission.count_refused("flood")
            stream = self.ws_connection.stream  # Tornado forgets it on close
            self.socket.connection.close(*close_codes.RATE_LIMIT)
            return _until_closed(stream)
        self.server.admission.count_refused("rate")
        self._reply(messages.ERROR, messages.frame(messages.error(
            messages.RATE_LIMITED, f"more than {bucket.rate:g} actions per second; "
                                   "slow down or the socket is closed")))

    def _act(self, action: messages.Action):
        """Run one action; an awaitable for those that read Redis (Tornado
        awaits it before the next frame, so replies keep the actions' order)."""
        connection, session = self.socket.connection, self.socket.session
        if action.name == "get_queue_status":
            self._reply(messages.QUEUE_STATUS, self.server.queue_status_frame(session.scope))
        elif action.name == "ping":
            self._reply(messages.PONG, messages.frame(messages.pong(time.time())))
        elif action.name == "subscribe":
            return self._subscribe(action)
        elif action.name == "get_task":
            return self._get_task(action.task_id)
        elif action.name == "resume":
            self.server.start_resume(connection, session, action.last_event_id)
        elif action.name == "refresh":
            scope, reply = self.server.admission.refresh(connection, session.scope, action.token)
            self.server.hub.rescope(session, scope)
            self._reply(messages.REFRESHED, reply)
        return None

    async def _subscribe(self, action: messages.Action) -> None:
        try:
            await self.server.subscribe(self.socket.session, action.task_ids, action.avids)
        except (RedisError, OSError) as exc:
            self._unavailable(exc)

    async def _get_task(self, task_id: str) -> None:
        try:
            record = await asyncio.wait_for(
                self.server.records.find(task_id, self.socket.session.scope), RECORD_READ_TIMEOUT)
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
        socket = self.socket
        if socket.connection is not None:
            socket.connection.lost()
        if socket.release_slot is not None:
            socket.release_slot()
            socket.release_slot = None

    def on_pong(self, data: bytes) -> None:
        if self.socket.connection is not None:
            self.socket.connection.pong()

    def on_ping(self, data: bytes) -> None:
        if self.socket.connection is not None:
            self.socket.connection.tornado_wrote()  # Tornado has just written its pong

    def _reply(self, kind: str, frame: bytes) -> None:
        self.socket.connection.write(frame)
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


class SocketState:
    """What the handler keeps of one socket (slots: see `initialize`). Read
    before the upgrade: `token`, `last_event_id`, cleared once used. Once
    open: its `Connection`, `Session` and action `bucket`; `release_slot`
    for a socket refused in `open` (its hold on its address's slot)."""

    __slots__ = ("token", "last_event_id", "connection", "session", "bucket", "release_slot")

    def __init__(self):
        self.token = self.last_event_id = None
        self.connection = self.session = self.bucket = self.release_slot = None

