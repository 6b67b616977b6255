"""How the helper processes reach the Celery broker: the app they use.

The event bridge's helper builds its Celery app with `broker_app`, so that
it names the broker's keys and channels as the workers do.
"""

from typing import Any, Mapping, Optional

from celery import Celery


def broker_app(broker_url: str, master: Optional[str] = None,
               transport_options: Optional[Mapping[str, Any]] = None) -> Celery:
    """A Celery app that only talks to the broker (events), never sends tasks.

    `transport_options` are the workers' own `broker_transport_options`, so
    that this app names the broker's keys as they do (`global_keyprefix`,
    `sep`, `priority_steps`). `master` names the Redis Sentinel master of a
    `sentinel://` broker when those options name none (`master_name`).
    Builds no connection.
    """
    app = Celery("notify-server", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = {
        **({"master_name": master} if master else {}), **(transport_options or {})}
    return app
