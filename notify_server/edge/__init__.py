"""The socket edge: one client connection and its heartbeat (Tornado)."""
