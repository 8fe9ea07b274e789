#!/usr/bin/env bash
# Start a Ray head node for `ray job submit` (launch/submit.sh). Loopback-only unless asked otherwise.
#
# Usage: launch/start_cluster.sh [--open] [--help]
#   --open    let other machines join this head, for a multi-node cluster: Ray advertises this
#             machine's routable address and its GCS, raylet, agents and workers listen on every
#             interface. Same as RAY_HEAD_HOST=0.0.0.0. Only on a trusted network: token auth (below)
#             is then the only guard.
#   --help    this text.
# Stop the head with `ray stop` (it stops every Ray on the machine; `ray stop --force` if it hangs).
#
# Run it from the environment distgnn is installed in: jobs run with the `python` first on the PATH of
# this script (the head's PATH), so `python -m distgnn.train` is that environment's interpreter.
#
# Environment (defaults in brackets). Ports sit outside Ray's worker port range (10002-19999).
#   RAY_HEAD_HOST         [127.0.0.1] address the head advertises and serves on. 127.0.0.1: every Ray
#                         port on loopback (checked with `ss -ltnp`). 0.0.0.0: same as --open. Another
#                         address (e.g. 10.0.0.5, to pick a network interface): advertised, but Ray 2.60
#                         still listens on every interface for GCS, raylet and agents, as with --open
#   DASHBOARD_HOST        [127.0.0.1] dashboard / job API bind address. Kept on loopback even with --open:
#                         reach it through an SSH tunnel (ssh -L 8265:127.0.0.1:8265 head)
#   DASHBOARD_PORT        [8265]  dashboard and job-submission API (launch/submit.sh talks to it)
#   GCS_PORT              [6380]  GCS; other nodes join with `ray start --address HEAD:GCS_PORT`
#   CLIENT_PORT           [10001] Ray Client server (Ray cannot turn it off; binds to RAY_HEAD_HOST)
#   DASHBOARD_AGENT_PORT  [52365] dashboard agent HTTP port (change it when another Ray runs here, and
#                         Ray's own AUTOSCALER_METRIC_PORT [44217] and DASHBOARD_METRIC_PORT [44227])
#   NUM_CPUS              [nproc] CPUs the head offers to jobs;  NUM_GPUS [what Ray detects]
#   RAY_TMPDIR            [$TMPDIR or /tmp] Ray's session files go under RAY_TMPDIR/ray
#   RAY_AUTH_MODE         [token] the cluster requires the token in ~/.ray/auth_token (or
#                         RAY_AUTH_TOKEN_PATH); `ray job submit` needs the same setting and token
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

open=0
for arg in "$@"; do
    case "$arg" in
        --open) open=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start_cluster.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

HEAD_HOST=${RAY_HEAD_HOST:-127.0.0.1}
if [[ $open == 1 ]]; then HEAD_HOST=0.0.0.0; fi
DASHBOARD_HOST=${DASHBOARD_HOST:-127.0.0.1}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
GCS_PORT=${GCS_PORT:-6380}
CLIENT_PORT=${CLIENT_PORT:-10001}
DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-52365}
NUM_CPUS=${NUM_CPUS:-$(nproc)}
# Token auth: anyone who can reach an open port but has no token is refused.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token ]]; then
    # `ray start` does not create the token (it fails without one); umask 077 so the token file Ray
    # writes is readable by this user only (Ray itself writes it with the default umask).
    (umask 077 && ray get-auth-token --generate >/dev/null)
fi

args=(--head --port "$GCS_PORT" --ray-client-server-port "$CLIENT_PORT"
      --dashboard-host "$DASHBOARD_HOST" --dashboard-port "$DASHBOARD_PORT"
      --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT"
      --num-cpus "$NUM_CPUS" --disable-usage-stats)
if [[ -n ${NUM_GPUS:-} ]]; then args+=(--num-gpus "$NUM_GPUS"); fi
if [[ -n ${RAY_TMPDIR:-} ]]; then args+=(--temp-dir "$RAY_TMPDIR/ray"); fi
if [[ $HEAD_HOST != 0.0.0.0 ]]; then args+=(--node-ip-address "$HEAD_HOST"); fi
if [[ $HEAD_HOST == 127.0.0.1 || $HEAD_HOST == localhost ]]; then
    # `ray start` replaces a loopback --node-ip-address by the machine's routable address, and with a
    # routable node address GCS, raylet and agents listen on every interface. This switch keeps
    # 127.0.0.1 (its only other effect: no other node can join); every Ray port then binds 127.0.0.1
    # (measured with `ss -ltnp`, ray 2.60).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    # A one-machine cluster has no node to drain: jobs (which inherit this environment) run without
    # Ray Train's preemption watcher, one process fewer and no Ray error line about it in their logs.
    export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=${RAY_TRAIN_ENABLE_PREEMPTION_WATCHER:-0}
fi

ray start "${args[@]}"

if [[ $HEAD_HOST == 0.0.0.0 ]]; then
    echo "Ray head is OPEN to the network: other nodes join with" \
         "RAY_AUTH_MODE=token ray start --address <this machine's IP>:$GCS_PORT (copy ~/.ray/auth_token there)"
fi
echo "Ray head is up (job API http://$DASHBOARD_HOST:$DASHBOARD_PORT); submit with:" \
     "DASHBOARD_PORT=$DASHBOARD_PORT launch/submit.sh --config configs/default.yaml"
