#!/usr/bin/env bash
# Submit `python -m distgnn.train ARGS...` to the Ray head of launch/start_cluster.sh, stream its logs
# and exit with the job's status.
#
# Usage: launch/submit.sh [train flags...]    e.g. launch/submit.sh --config configs/ml-100k.yaml --optim.epochs 20
#        launch/submit.sh --remote [flags]    for a cluster on other machines (see Paths below)
#        launch/submit.sh --dry-run [flags]   print the `ray job submit` command instead of running it
#        launch/submit.sh --help              this text (`python -m distgnn.train --help` lists the flags)
#
# - Interpreter: the job runs `python -m distgnn.train` with the first `python` on the HEAD's PATH (the
#   environment start_cluster.sh ran in), importing distgnn from the uploaded copy of this folder.
# - Code: this project folder is the job's working dir. Ray uploads a copy of it, without /data, /runs,
#   /exports, /benchmarks/out, .git, *.egg-info, caches and virtualenvs (any folder holding pyvenv.cfg);
#   a .rayignore file adds excludes (.gitignore is not used).
# - Paths: the job gets DISTGNN_BASE_DIR=<this project folder, absolute>, so relative paths given to train
#   (--graph, --config, --run.output_dir) resolve against the project folder, not Ray's temporary copy:
#   runs land in <project>/runs/ (or where --run.output_dir says). The head must see this folder: same
#   machine or a shared file system. --remote leaves DISTGNN_BASE_DIR out: relative inputs (configs/...)
#   resolve in the job's copy of the code, and outputs must be URIs (--run.storage s3://...) or absolute
#   paths on the cluster (train refuses a relative output path there). See launch/README.md.
# - Exit status: 0 if the job succeeded; if it failed, the driver's exit code (128 + N if signal N killed
#   it; 1 when it has none, e.g. the runtime env could not be set up); 1 if it was stopped. Ctrl-C stops the job (`ray job stop`), exit 130.
# Run it from the environment Ray is installed in (it uses `ray` and `python` from PATH).
#
# Environment (defaults in brackets):
#   RAY_API_SERVER_ADDRESS  [http://127.0.0.1:$DASHBOARD_PORT] job API of the head
#   DASHBOARD_PORT          [8265] as given to start_cluster.sh
#   RAY_AUTH_MODE           [token] as the head; the token is read from ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH)
#   DISTGNN_BASE_DIR        [the project folder] folder relative paths resolve against in the job
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
dry_run=0
remote=0
while [[ ${1:-} == --dry-run || ${1:-} == --remote ]]; do
    if [[ $1 == --dry-run ]]; then dry_run=1; else remote=1; fi
    shift
done

project=$(cd "$(dirname "$0")/.." && pwd -P)
address=${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:${DASHBOARD_PORT:-8265}}
base=$(cd "${DISTGNN_BASE_DIR:-$project}" && pwd -P)
# `ray job submit` needs the cluster's token mode in its own environment (the token lives in ~/.ray).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

if [[ $remote == 1 ]]; then
    env_vars='{}'
else
    env_vars=$(python -c 'import json, sys; print(json.dumps({"DISTGNN_BASE_DIR": sys.argv[1]}))' "$base")
    if [[ $(pwd -P) != "$base" ]]; then
        echo "submit.sh: relative paths resolve against $base (DISTGNN_BASE_DIR), not the current folder" >&2
    fi
    case $address in
        http://127.0.0.1:* | http://localhost:* | http://\[::1\]:*) ;;
        *) echo "submit.sh: the cluster at $address must see $base at that path (else use --remote)" >&2 ;;
    esac
fi

# Explicit excludes instead of .gitignore's (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 below): its unanchored
# 'data/' also drops the package folder distgnn/data/. A leading '/' anchors a pattern to the project
# folder; without a trailing '/' a pattern matches the folder itself, so Ray does not even walk it.
excludes=(/data /runs /exports /benchmarks/out .git '*.egg-info' .venv venv __pycache__ .pytest_cache
          .ruff_cache /.whl '*.tmp-*')
while IFS= read -r cfg; do
    excludes+=("/$(dirname "${cfg#./}")")
done < <(cd "$project" && find . -mindepth 2 -maxdepth 3 -name pyvenv.cfg -not -path './.git/*')

runtime_env=$(python -c 'import json, sys
print(json.dumps({"env_vars": json.loads(sys.argv[1]), "excludes": sys.argv[2:]}))' "$env_vars" "${excludes[@]}")

job_id="distgnn-train-$(date +%Y%m%d-%H%M%S)-$$"
submit=(ray job submit --address "$address" --submission-id "$job_id" --working-dir "$project"
        --runtime-env-json "$runtime_env" -- python -m distgnn.train "$@")
if [[ $dry_run == 1 ]]; then
    python -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' \
        RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 "${submit[@]}"
    exit 0
fi
stop_job() {
    echo "submit.sh: stopping job $job_id" >&2
    ray job stop --address "$address" "$job_id" >&2 || true
    exit 130
}
trap stop_job INT TERM

rc=0
RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 "${submit[@]}" || rc=$?
trap - INT TERM

# `ray job submit` exits 1 for a failed job and 0 otherwise, a stopped job included; ask for the driver's
# own exit code. If the job cannot be found (the submission itself failed), keep the CLI's status.
status=$(python - "$address" "$job_id" <<'EOF' 2>/dev/null || echo "unknown $rc"
import sys
import time

from ray.job_submission import JobStatus, JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
deadline = time.monotonic() + 30
info = client.get_job_info(sys.argv[2])
while not info.status.is_terminal() and time.monotonic() < deadline:
    time.sleep(0.5)
    info = client.get_job_info(sys.argv[2])
if info.status == JobStatus.SUCCEEDED:
    code = 0
elif info.status == JobStatus.FAILED and info.driver_exit_code:
    # a driver killed by signal N reports -N: exit 128 + N, as a shell does
    code = info.driver_exit_code if info.driver_exit_code > 0 else 128 - info.driver_exit_code
else:
    code = 1
print(info.status.value, code)
EOF
)
read -r state code <<<"$status"
if [[ $state != SUCCEEDED ]]; then
    echo "submit.sh: job $job_id ended $state, exit status $code" >&2
fi
exit "$code"
