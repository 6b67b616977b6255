"""Failure alerts to webhooks: which events, what is posted, how often (pure).

The sender that reads the history and posts is an adapter:
`notify_server.redis_io.alert_sender`.
"""
