#!/usr/bin/env bash
# Set up a virtual environment with tiergate and its test dependencies, then run the whole suite.
# This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# Router data for the data-backed tests (RouteLLM metric reproduction, CLI): ../shared/data next to
# the checkout, else the workplace copy; they skip with a reason when neither exists.
for d in ../shared/data /work/shared/data; do
  if [ -z "${TIERGATE_DATA_DIR:-}" ] && [ -d "$d" ]; then export TIERGATE_DATA_DIR="$(cd "$d" && pwd)"; fi
done
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
