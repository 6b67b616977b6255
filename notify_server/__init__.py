"""Realtime Celery task notifications over WebSocket: a pure core and its adapters.

This is the map of the package, one line per subpackage and module; a module
added without its line fails tests/unit/test_package_map.py. How the parts work
together, and in which process each one runs: docs/architecture.md. Pure means
no I/O and no Tornado, Redis, Celery or kombu import; the worker side needs
only celery, redis and orjson; nothing here imports `handlers`, `settings` or `run`
(tests/unit/test_boundaries.py).

protocol/                     the wire: message shapes, stream ids, frames (pure)
protocol/emit_script.py       the emit script: an event and its task's record in one step (stdlib)
protocol/close_codes.py       every close code and reason the server sends, one table
protocol/framing.py           WebSocket text frames, built once for every client
protocol/messages.py          server replies built and encoded, client actions parsed
protocol/names.py             Redis key names and defaults workers and servers share (stdlib)
protocol/stream.py            events read from Redis, with their stream ids; frames joined
protocol/task_events.py       task events as workers write them: shapes, subject, owner (stdlib, orjson)
access/                       who may connect and what they see (pure)
access/admission.py           who is admitted: tokens, connection limits, rates, expiry
access/auth.py                JWT tokens verified into scopes: the owners a client sees
access/limits.py              sockets in all and per address, actions per second
delivery/                     fan-out to client sessions (pure)
delivery/hub.py               the open sessions; a broadcast framed once, offered by owner
delivery/queue_views.py       queue_status frames per scope's view, and whom a change reaches
delivery/relay_cursor.py      which relayed events are new, where a gap fill starts, resyncs
delivery/session.py           one client's filter, scope and held live events during a resume
records/                      task records: what clients see of them, how lists page (pure)
records/query.py              a task list's filters checked, its bounds and cursors
records/record.py             a record as clients get it, from the hash the script keeps
alerts/                       failure alerts to webhooks: what, to whom, how often (pure)
alerts/bodies.py              the bodies posted: plain JSON, or Slack's text and blocks
alerts/budget.py              posts per webhook per minute: a token bucket, `now` handed in
alerts/outbox.py              one webhook's next post in stream order; storm summaries, gaps
alerts/rules.py               which history events are alerted: statuses and task names
alerts/webhooks.py            NOTIFY_ALERT_WEBHOOKS parsed; URLs redacted for logs
queue/                        the queue snapshot's rules (pure)
queue/poll_outcome.py         what one inspect poll means: publish, poll again or stale
queue/replies.py              inspect replies and queue depths as queue_status data
queue/snapshot.py             the format of the snapshot the leader shares through Redis
queue/state.py                the last snapshot and whether it is current
queue/views.py                what a scope sees of the data; the bridge's workers merged in
redis_io/                     Redis adapters (redis.asyncio)
redis_io/alert_sender.py      alerts posted to one webhook from the history, while leading
redis_io/backoff.py           reconnect delays: exponential backoff with full jitter (pure)
redis_io/clients.py           where Redis is: one URL, or the primary Sentinel names
redis_io/history.py           reads of the event history stream, for gap fills and resumes
redis_io/lease.py             the renewed lease that makes one server process the leader
redis_io/records.py           task records read, listed, counted per minute and swept
redis_io/relay.py             the one subscription: events and shared snapshots in, gaps filled
redis_io/resume.py            client resumes: the history after a last id, then live
redis_io/snapshot_store.py    the queue snapshot: written by the leader, adopted by all
celery_io/                    Celery adapters, each running Celery in a helper process
celery_io/bridge.py           the bridge's supervisor: starts, restarts and stops its helper
celery_io/bridge_helper.py    in the bridge helper: Celery's event stream written as task events
celery_io/bridge_mapping.py   Celery's events as protocol events, and the worker table (pure)
celery_io/bridge_redis.py     in the bridge helper: the event channel of a Redis broker, read directly
celery_io/bridge_rules.py     the takeover replay and the helper's timing, `now` handed in (pure)
celery_io/bridge_wire.py      kombu's Redis fanout: the event channel's name, messages into events (pure)
celery_io/broker.py           the one Celery app that inspects or receives from the broker
celery_io/helper_process.py   the one starter of helper processes: spawned, dies with its server
celery_io/inspect_helper.py   in the inspect helper: active, scheduled, reserved and queue depths
celery_io/poller.py           the poll schedule on the server's loop, while it holds the lease
edge/                         the Tornado socket edge
edge/connection.py            one client socket: open, closing or closed, and the writes to it
edge/heartbeat.py             protocol pings for every open socket from one timer
worker/                       what a Celery worker installs (protocol, stdlib, celery, redis)
worker/emitter.py             writes events to the history stream and channel in one script
worker/hook.py                install(app): Celery signals in, task events out
dev/                          for development only
dev/demo.py                   the demo Celery app and its task producer
dev/embedded_redis.py         a private redis-server for when no Redis is configured
dashboard/                    the dashboard page, scripts and styles (its JS client: clients/)
config.py                     ServerConfig and its parts: frozen, with defaults (pure)
server.py                     NotifyServer: builds every part, wires their callbacks, runs them
metrics.py                    Prometheus metrics of one server process
celery_metrics.py             relayed events and the snapshot as celery-exporter's metrics (pure)
children.py                   child processes the server starts, stopped with it
"""
