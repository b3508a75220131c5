#!/usr/bin/env bash
# Create bench/.litellm-venv with the LiteLLM proxy, pinned exactly, for bench/overhead.py.
#
# LiteLLM is a bench-only comparison target: it is never a dependency of tiergate.
# The version is pinned exactly: newer releases do not install on this machine, and one
# LiteLLM release on PyPI was a supply-chain compromise, so never float this pin.
# Usage: bash bench/litellm_setup.sh        (idempotent; re-run to repair the venv)
set -euo pipefail

LITELLM_VERSION="1.106.2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.litellm-venv"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "${VENV}/bin/python" ]]; then
  "${PYTHON}" -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet "litellm[proxy]==${LITELLM_VERSION}"

installed="$("${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
if [[ "${installed}" != "${LITELLM_VERSION}" ]]; then
  echo "litellm_setup: expected litellm ${LITELLM_VERSION}, found ${installed}" >&2
  exit 1
fi
echo "litellm ${installed} ready: ${VENV}/bin/litellm"
