#!/usr/bin/env bash
# Train on several nodes (run this script on every node, with its NODE_RANK). Each node trains on all its GPUs;
# the guard is served elsewhere (a dedicated node running scripts/launch_guard.sh, reachable from every node).
# Rollouts use a vLLM server too (`trl vllm-serve` on another node) when the config says vllm_mode: server.
#   NODE_RANK=0 MAIN_ADDR=10.0.0.1 GUARD_URL=http://10.0.0.9:8001/v1 scripts/train_multinode.sh CONFIG.yaml
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

CONFIG="${1:?usage: $0 CONFIG.yaml [safe-rl train flags...]}"; shift
NUM_NODES="${NUM_NODES:-2}"
NODE_RANK="${NODE_RANK:?set NODE_RANK (0 on the main node)}"
MAIN_ADDR="${MAIN_ADDR:?set MAIN_ADDR (address of the main node)}"
MAIN_PORT="${MAIN_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/zero3-multinode.yaml}"
GUARD_URL="${GUARD_URL:?set GUARD_URL (the guard server, e.g. http://10.0.0.9:8001/v1)}"

. "$(dirname "${BASH_SOURCE[0]}")/_run.sh"

run accelerate launch \
  --config_file "${ACCELERATE_CONFIG}" \
  --num_machines "${NUM_NODES}" \
  --machine_rank "${NODE_RANK}" \
  --main_process_ip "${MAIN_ADDR}" \
  --main_process_port "${MAIN_PORT}" \
  --num_processes "$((NUM_NODES * GPUS_PER_NODE))" \
  -m safe_rl.training --config "${CONFIG}" --guard_base_url "${GUARD_URL}" "$@"
