#!/usr/bin/env bash
# Submit a vlmq training job to a running Ray cluster.
#   deploy/submit.sh configs/numberline.yaml [dotted overrides...] [--resume]
# RAY_ADDRESS defaults to the dashboard on localhost: reach a remote cluster's dashboard through an
# SSH tunnel (`ray dashboard deploy/cluster.yaml`), never by exposing port 8265 (ShadowRay).
# With token auth on (the cluster configs here turn it on) export RAY_AUTH_MODE=token and
# RAY_AUTH_TOKEN (or keep the token at ~/.ray/auth_token) before running this.
# Optional: VLMQ_JOB_ID (submission id, so you can `ray job logs/stop` it by name),
# VLMQ_SUBMIT_FLAGS (e.g. --no-wait), VLMQ_PYTHON (the cluster's python, default `python`).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: deploy/submit.sh CONFIG [overrides...]}"
shift
exec ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env deploy/runtime_env.yaml \
  ${VLMQ_JOB_ID:+--submission-id "$VLMQ_JOB_ID"} \
  ${VLMQ_SUBMIT_FLAGS:-} \
  -- "${VLMQ_PYTHON:-python}" -m vlmq.cli train --config "$config" "$@"
