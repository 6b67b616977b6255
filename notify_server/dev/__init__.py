"""For development only: the embedded Redis and the demo."""
