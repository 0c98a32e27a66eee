#!/usr/bin/env bash
# Serve Qwen3Guard-Gen with vLLM (OpenAI-compatible) for the reward: guard.base_url = http://HOST:PORT/v1.
# The server applies the guard's own chat template; the reward escapes policy text before sending it.
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

GUARD_MODEL="${GUARD_MODEL:-Qwen/Qwen3Guard-Gen-4B}"
GUARD_GPU="${GUARD_GPU:-7}"                  # the GPU left out of training
PORT="${PORT:-8001}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-8192}"        # = the reward's guard max_input_tokens budget plus the verdict
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.85}"

. "$(dirname "${BASH_SOURCE[0]}")/_run.sh"

run env CUDA_VISIBLE_DEVICES="${GUARD_GPU}" vllm serve "${GUARD_MODEL}" \
  --port "${PORT}" \
  --max-model-len "${MAX_MODEL_LEN}" \
  --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION}" \
  --generation-config vllm      # vLLM's neutral defaults; the reward asks for temperature 0
