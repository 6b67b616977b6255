"""Wait for a log line from another thread (the emitter's writer logs there)."""

import contextlib
import logging
import threading
from typing import Iterator, List


class LogWatch(logging.Handler):
    """Collects the messages of one logger; `wait_for(text)` blocks until a
    message containing `text` was logged (or the timeout passed)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.messages.append(record.getMessage())
            self._changed.notify_all()

    def matching(self, text: str) -> List[str]:
        with self._changed:
            return [message for message in self.messages if text in message]

    def wait_for(self, text: str, timeout: float = 10.0) -> List[str]:
        """The messages containing `text`, once there is one; fails after `timeout` s."""
        with self._changed:
            found = self._changed.wait_for(lambda: self.matching(text), timeout)
        assert found, f"no log line with {text!r} within {timeout} s: {self.messages}"
        return found


@contextlib.contextmanager
def watching(logger_name: str) -> Iterator[LogWatch]:
    """A `LogWatch` on `logger_name` (at WARNING and up) for the block."""
    watch = LogWatch()
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.WARNING)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
