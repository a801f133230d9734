#!/usr/bin/env bash
# Quick start, command 1: set everything up, then train and evaluate the LiTS bundle on its synthetic data,
# logging both runs to mlruns/ (SQLite mlruns/mlflow.db, artifacts in mlruns/artifacts/).
# Extra arguments are passed to both bundle runs as config overrides, e.g. --labelled_fraction 1/10.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

echo "==> generating synthetic LiTS phantoms in data/lits_synthetic (skipped where they exist)"
varseg make-data lits data/lits_synthetic --num-cases 32 --shape 128 128 32 --seed 0

echo "==> training the LiTS bundle"
python -m monai.bundle run --config_file bundles/lits/configs/train.json "$@"

echo "==> evaluating the best checkpoint on the held-out test cases"
python -m monai.bundle run --config_file "['bundles/lits/configs/train.json','bundles/lits/configs/evaluate.json']" "$@"

varseg runs --experiment varseg-lits --last 2
