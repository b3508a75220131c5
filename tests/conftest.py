"""pytest fixtures shared by every test package."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def tmp_db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tiergate.db'}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


@pytest.fixture
def records():
    """(level, message) of every record the `tiergate` logger emits during the test (an own handler on the
    package logger: `tiergate.logs.setup_logging` may have stopped propagation to root)."""
    logger, handler = logging.getLogger("tiergate"), _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)
