"""Celery adapters: the inspect poller and the event bridge, with their helper processes."""
