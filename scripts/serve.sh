#!/usr/bin/env bash
# Set up a virtual environment with tiergate and run the gateway on the embedded defaults
# (SQLite in ./tiergate.db, in-process state, the labelled `sim` simulator unless OPENAI_API_KEY is set).
# Extra arguments go to `tiergate serve` (e.g. --config tiergate.yaml --port 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/tiergate serve "$@"
