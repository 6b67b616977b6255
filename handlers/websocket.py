"""WebSocket: `/ws/tasks/`, the seed's socket (docs/protocol.md, "WebSocket")."""

import tornado.websocket

from notify_server import messages
from notify_server.messages import ProtocolError

from .origin import origin_allowed


class TaskSocketHandler(tornado.websocket.WebSocketHandler):
    """One client socket.

    On open the client gets the current `queue_status`, then every task event
    (or, after `?last_event_id=ID`, the history after ID, a `queue_status`
    and then the live stream). Actions: `get_queue_status`, `ping`,
    `subscribe`, `resume`. Bad frames get an `error` reply and the socket
    stays open. A frame over `max_message_size` closes it with 1009 (Tornado
    does this); the `Connection` closes a slow client with 4008 and a peer
    that misses a pong with 1001. What may still be written is decided by the
    `Connection` alone.
    """

    def initialize(self, server, allowed_origins) -> None:
        self.server = server
        self.allowed_origins = allowed_origins
        self.connection = None
        self.session = None

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.allowed_origins)

    def open(self) -> None:
        # Tornado turns Nagle back on after the upgrade; small frames must not wait for ACKs.
        self.set_nodelay(True)
        self.connection, self.session = self.server.connect(
            self.ws_connection.stream, self.close, self.request.remote_ip)
        last_event_id = self.get_query_argument("last_event_id", None)
        if last_event_id is None:
            self.server.join(self.connection, self.session)
            return
        try:
            action = messages.parse_resume_argument(last_event_id)
        except ProtocolError as exc:
            self.server.join(self.connection, self.session)
            self._reply(messages.ERROR, messages.frame(exc.reply()))
            return
        self.server.start_resume(self.connection, self.session, action.last_event_id)

    def on_message(self, frame) -> None:
        try:
            self._act(messages.parse_action(frame))
        except ProtocolError as exc:
            self._reply(messages.ERROR, messages.frame(exc.reply()))

    def _act(self, action: messages.Action) -> None:
        if action.name == "get_queue_status":
            self._reply(messages.QUEUE_STATUS, self.server.queue_status_frame())
        elif action.name == "ping":
            self._reply(messages.PONG, self.server.pong_frame())
        elif action.name == "subscribe":
            self.session.subscribe(action.task_ids, action.avids)
        elif action.name == "resume":
            self.server.start_resume(self.connection, self.session, action.last_event_id)

    def on_close(self) -> None:
        if self.connection is not None:
            self.connection.lost()

    def on_pong(self, data: bytes) -> None:
        self.connection.pong()

    def on_ping(self, data: bytes) -> None:
        self.connection.tornado_wrote()  # Tornado has just written its pong

    def _reply(self, kind: str, frame: bytes) -> None:
        self.connection.write(frame)
        self.server.count_sent(kind)
