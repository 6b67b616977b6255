"""An `Emitter` whose `emit` returns once the event is in Redis, for tests that read right after."""

from notify_server.worker.emitter import Emitter


class WrittenEmitter(Emitter):
    """`emit`, then `flush`: the test's next line sees the event in Redis
    (the emitter itself only queues it for its writer thread)."""

    def emit(self, message, once=None, record=None) -> None:
        super().emit(message, once=once, record=record)
        assert self.flush(10.0), f"{self.pending} event(s) not written within 10 s"
