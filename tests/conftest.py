"""pytest fixtures shared by every test package."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

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


@contextlib.contextmanager
def on_tiergate_logger(handler: logging.Handler) -> Iterator[logging.Handler]:
    """`handler` on the `tiergate` package logger at DEBUG for the block (an own handler: `tiergate.logs`
    may have stopped propagation to root); the logger's level is restored after."""
    logger = logging.getLogger("tiergate")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def records():
    """(level, message) of every record the `tiergate` logger emits during the test."""
    with on_tiergate_logger(_Records()) as handler:
        yield handler.messages
