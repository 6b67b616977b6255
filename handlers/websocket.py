"""WebSocket: `/ws/tasks/`, the seed's socket (PROTOCOL.md section 1)."""

import logging

import tornado.websocket

from notify_server import messages
from notify_server.messages import ProtocolError
from notify_server.session import Session
from notify_server.writer import FrameWriter

from .origin import origin_allowed

log = logging.getLogger(__name__)


class TaskSocketHandler(tornado.websocket.WebSocketHandler):
    """One client socket.

    On open the client joins the hub and receives every task event (or, after
    `?last_event_id=ID`, the history after ID and then the live stream).
    Actions: `get_queue_status`, `ping`, `subscribe`, `resume`. Bad frames get
    an `error` reply and the socket stays open. A frame over
    `max_message_size` closes it with 1009 (Tornado does this); a client whose
    unsent backlog passes `max_client_buffer` bytes is closed with
    `messages.CLOSE_SLOW` (4008). The server's `Heartbeat` pings it every
    `ping_interval` and closes it if no pong comes within `ping_timeout`.
    """

    PING_FRAME = b"\x89\x00"  # final ping frame, empty payload

    def initialize(self, server) -> None:
        self.server = server
        self.session = None
        self.writer = None
        self.awaiting_pong = False

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.server.settings.allowed_origins)

    def open(self) -> None:
        # Tornado turns Nagle back on after the upgrade; small frames must not wait for ACKs.
        self.set_nodelay(True)
        self.writer = FrameWriter(self.ws_connection.stream, self.server.settings.max_client_buffer,
                                  self._too_slow)
        self.session = Session(self.writer.write, self.close, self.server.metrics.delivered)
        self.server.heartbeat.add(self)
        last_event_id = self.get_query_argument("last_event_id", None)
        if last_event_id is None:
            self.server.hub.add(self.session)
            return
        try:
            action = messages.parse_resume_argument(last_event_id)
        except ProtocolError as exc:
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            self.server.hub.add(self.session)
            return
        self._start_resume(action.last_event_id)

    def on_message(self, frame) -> None:
        try:
            action = messages.parse_action(frame)
        except ProtocolError as exc:
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return
        if action.name == "get_queue_status":
            self._reply(messages.QUEUE_STATUS, self.server.queue_status_frame())
        elif action.name == "ping":
            self._reply(messages.PONG, self.server.pong_frame())
        elif action.name == "subscribe":
            self.session.subscribe(action.task_ids, action.avids)
        elif action.name == "resume":
            self._start_resume(action.last_event_id)

    def on_close(self) -> None:
        self.server.heartbeat.discard(self)
        if self.session is not None:
            self.server.forget(self.session)

    def on_pong(self, data: bytes) -> None:
        self.awaiting_pong = False

    def send_ping(self) -> None:
        self.writer.write(self.PING_FRAME)

    def ping_timed_out(self) -> None:
        log.info("closing %s: no pong within %.1f s", self.request.remote_ip,
                 self.server.settings.ping_timeout)
        self.close(messages.CLOSE_GOING_AWAY, "ping timeout")

    def _start_resume(self, last_event_id: str) -> None:
        self.session.hold()
        self.server.hub.add(self.session)
        self.server.start_resume(self.session, last_event_id)

    def _reply(self, kind: str, frame: bytes) -> None:
        self.writer.write(frame)
        self.server.metrics.sent_of(kind).inc()

    def _too_slow(self, dropped_bytes: int) -> None:
        self.server.forget(self.session)
        self.server.slow_client_closed(dropped_bytes)
        log.warning("closing slow client %s: more than %d bytes unsent",
                    self.request.remote_ip, self.server.settings.max_client_buffer)
        self.close(messages.CLOSE_SLOW, "slow client: outgoing buffer full")
