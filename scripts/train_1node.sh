#!/usr/bin/env bash
# Train on one 8-GPU node: TRAIN_GPUS processes under DeepSpeed ZeRO-3, the remaining GPU(s) serving the guard
# (scripts/launch_guard.sh). Extra arguments go to `safe-rl train` (any TRL flag, e.g. --learning_rate 2e-6).
#   scripts/launch_guard.sh &
#   scripts/train_1node.sh configs/qwen3-4b-saferl-hybrid.yaml [--resume]
# DRY_RUN=1 prints the command instead of running it (and does not wait for the guard).
set -euo pipefail

CONFIG="${1:?usage: $0 CONFIG.yaml [safe-rl train flags...]}"; shift
TRAIN_GPUS="${TRAIN_GPUS:-7}"                               # GPUs 0..TRAIN_GPUS-1 train
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/zero3.yaml}"
GUARD_URL="${GUARD_URL:-http://localhost:8001/v1}"

. "$(dirname "${BASH_SOURCE[0]}")/_run.sh"

# Wait for the guard server, so that the first step does not fail its reward.
if [[ "${DRY_RUN}" != 1 ]]; then
  until curl -sf "${GUARD_URL}/models" > /dev/null; do echo "waiting for the guard at ${GUARD_URL}"; sleep 10; done
fi

run env CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((TRAIN_GPUS - 1)))" accelerate launch \
  --config_file "${ACCELERATE_CONFIG}" \
  --num_processes "${TRAIN_GPUS}" \
  -m safe_rl.training --config "${CONFIG}" --guard_base_url "${GUARD_URL}" "$@"
