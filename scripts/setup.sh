#!/usr/bin/env bash
# Create .venv (if missing) with Python 3.11, install torch 2.13.0 (CPU wheel) first, then varseg with its test extra.
# Sourced by quickstart.sh and test.sh; safe to run again (it skips what is already installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    PY="${PYTHON:-}"
    if [ -z "$PY" ]; then
        for cand in python3.11 python3 python; do
            if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
                PY="$cand"; break
            fi
        done
    fi
    if [ -z "$PY" ]; then
        echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "==> creating .venv with $PY"
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.varseg-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c 'import torch, monai, pipeline' 2>/dev/null; then
    echo "==> installing torch 2.13.0 then varseg (a few minutes the first time)"
    python -m pip install --quiet --upgrade pip 2>&1 | grep -v -i warning || true
    python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
        || python -m pip install --quiet torch==2.13.0 2>&1 | grep -v -i warning || true
    python -m pip install --quiet -e ".[test]" 2>&1 | grep -v -i warning || true
    python -c 'import torch, monai, mlflow, pipeline, losses, networks, transforms' \
        || { echo "error: installation failed; see the pip messages above" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
