"""pytest fixtures shared by every test package."""

from __future__ import annotations

import pytest


@pytest.fixture
def tmp_db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tiergate.db'}"
