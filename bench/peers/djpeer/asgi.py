"""`daphne djpeer.asgi:application` (run from bench/peers)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djpeer.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import path  # noqa: E402

django_application = get_asgi_application()

from .consumers import TaskConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_application,
    "websocket": URLRouter([path("ws/tasks/", TaskConsumer.as_asgi())]),
})
