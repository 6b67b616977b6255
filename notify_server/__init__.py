"""Realtime Celery task notifications: the protocol core and its adapters.

Pure modules (no I/O): events (stdlib only, shared with workers), messages,
framing, queue_status, poll_outcome, relay_cursor, session, hub, backoff.
Adapters: connection (one client socket), heartbeat, relay (Redis
subscription), history (Redis stream reads), poller (Celery inspect),
metrics, emitter and worker (the Celery side), server (wiring),
embedded_redis, children, demo. Nothing here imports `handlers` or `settings`.
"""
