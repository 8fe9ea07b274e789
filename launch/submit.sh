#!/usr/bin/env bash
# Submit a distgnn training job to the cluster started by launch/start_cluster.sh and stream its logs.
#   launch/submit.sh --config configs/ml-100k.yaml --optim.epochs 20
# Any arguments are passed to `python -m distgnn.train`. The job runs in this folder (working_dir),
# so relative paths in configs resolve as they do locally.
set -euo pipefail
cd "$(dirname "$0")/.."
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
# `ray job submit` needs the cluster's token mode in its own environment (the token lives in ~/.ray).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
exec ray job submit --address "http://127.0.0.1:${DASHBOARD_PORT}" --working-dir . \
    -- python -m distgnn.train "$@"
