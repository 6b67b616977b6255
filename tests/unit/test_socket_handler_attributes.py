"""The socket handler adds two attributes to Tornado's, no more.

CPython keeps an instance's attributes in a table its class shares while
there are at most 29; Tornado's WebSocketHandler has 27 once the socket is
open. A third attribute of ours would give every socket a dict of its own,
1.3 KB more each (bench/RESULTS-memory.md): keep per-socket state in
`SocketState`'s slots instead.
"""

from unittest import mock

import tornado.httputil
import tornado.web
import tornado.websocket

from handlers.websocket import TaskSocketHandler


def attributes(handler_class, **kwargs) -> set:
    application = tornado.web.Application(allowed_origins=())
    request = tornado.httputil.HTTPServerRequest(method="GET", uri="/ws/tasks/",
                                                 connection=mock.Mock())
    return set(vars(handler_class(application, request, **kwargs)))


def test_the_socket_handler_keeps_two_attributes_of_its_own():
    ours = attributes(TaskSocketHandler, server=mock.Mock())
    tornados = attributes(tornado.websocket.WebSocketHandler)
    assert ours - tornados == {"server", "socket"}
