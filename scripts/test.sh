#!/usr/bin/env bash
# Set up a virtual environment with tiergate and its test dependencies, then run the whole suite.
# This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
