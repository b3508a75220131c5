"""Identifiers in OpenAI's style (`chatcmpl-…`, `call_…`, `req_…`)."""

from __future__ import annotations

import os


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}{os.urandom(nbytes).hex()}"
