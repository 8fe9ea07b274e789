#!/usr/bin/env bash
# Start a local Ray head node for `ray job submit`. Run it from the environment distgnn is installed in:
# jobs run with the head's `python`. Ports sit outside Ray's worker port range (10002-19999).
#   launch/start_cluster.sh            # then: launch/submit.sh [train flags...]
#   ray stop                           # when done
set -euo pipefail
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
GCS_PORT=${GCS_PORT:-6380}
NUM_CPUS=${NUM_CPUS:-$(nproc)}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
ray start --head --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --num-cpus "$NUM_CPUS" --disable-usage-stats
echo "Ray head is up; submit with: launch/submit.sh --config configs/default.yaml"
