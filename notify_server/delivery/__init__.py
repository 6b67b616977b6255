"""Fan-out to sockets: sessions, the hub, the relay's cursor (pure)."""
