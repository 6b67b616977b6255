"""How the helper processes reach the Celery broker: the app they use, the errors it raises.

Both helpers (the inspect poller's and the event bridge's) build their Celery
app with `broker_app`, so that they name the broker's keys and channels as
the workers do. The server process calls only `broker_errors`, to tell a
broker fault from a bug.
"""

import logging
from typing import Any, Mapping, Optional, Tuple, Type

from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

# Broker transport options that keep a poll from hanging: they win over the
# workers', because the inspect poll's time limit counts on them.
FAIL_FAST_OPTIONS = {"socket_timeout": 3.0, "socket_connect_timeout": 2.0, "max_retries": 1}


def broker_app(broker_url: str, master: Optional[str] = None,
               transport_options: Optional[Mapping[str, Any]] = None, *,
               fail_fast: bool = False) -> Celery:
    """A Celery app that only talks to the broker (inspect, events), never sends tasks.

    `transport_options` are the workers' own `broker_transport_options`, so
    that this app names the broker's keys as they do (`global_keyprefix`,
    `sep`, `priority_steps`). `master` names the Redis Sentinel master of a
    `sentinel://` broker when those options name none (`master_name`). With
    `fail_fast`, `FAIL_FAST_OPTIONS` replace theirs and a failed connection is
    not retried: a call raises within seconds when the broker is down.
    Builds no connection.
    """
    app = Celery("notify-server", broker=broker_url, set_as_current=False)
    options = {**({"master_name": master} if master else {}), **(transport_options or {}),
               **(FAIL_FAST_OPTIONS if fail_fast else {})}
    app.conf.broker_transport_options = options
    if fail_fast:
        app.conf.update(broker_connection_timeout=2.0, broker_connection_retry=False,
                        broker_connection_max_retries=1)
    return app


def broker_errors(broker_url: str) -> Tuple[Type[BaseException], ...]:
    """What calls on the broker raise when it cannot be reached.

    kombu's `OperationalError` (a failed connect), `OSError` (sockets,
    timeouts) and the transport's own connection and channel errors (redis-py's
    `ConnectionError`, `TimeoutError`, `ResponseError`, ... for Redis), minus
    `KeyError`, which kombu's Redis transport lists for an old redis-py quirk
    and which here is far likelier a bug. Builds no connection. A transport that cannot be
    loaded (unknown scheme, missing library) is logged here, once: every
    call will then fail, with that error in its traceback.
    """
    try:
        with Connection(broker_url) as connection:
            # Channel errors too: a broker that answers READONLY (a replica
            # after a failover), OOM or MISCONF is a broker fault, not our bug.
            transport_errors = connection.connection_errors + connection.channel_errors
    except (KeyError, ImportError) as exc:
        log.error("cannot load the Celery broker transport: %s: %s", type(exc).__name__, exc)
        transport_errors = ()
    errors = (OperationalError, OSError,
              *(error for error in transport_errors if not issubclass(error, LookupError)))
    return tuple(dict.fromkeys(errors))
