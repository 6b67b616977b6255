"""Realtime Celery task notifications: the protocol core and its adapters.

Pure modules (no I/O): messages, queue_status, session, hub, backoff.
Adapters: relay (Redis subscription), history (Redis stream reads), poller
(Celery inspect), emitter and worker (the Celery side), server (wiring),
embedded_redis, demo.
"""
