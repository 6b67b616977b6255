"""What a Celery worker installs: `install(app)` and the `Emitter`.

This package imports only `notify_server.protocol`, the standard library,
celery, redis and orjson: the wheel holds it with nothing more.
"""

from notify_server.worker.hook import Notifier, install

__all__ = ["Notifier", "install"]
