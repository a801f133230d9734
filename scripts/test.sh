#!/usr/bin/env bash
# Quick start, command 2: set everything up, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
python -m pytest -q "$@"
