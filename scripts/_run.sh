# shellcheck shell=bash
# Sourced by the launch scripts: `run CMD ARGS...` executes CMD in place of the script, or with DRY_RUN=1 prints it
# (one line, shell-quoted) and returns, so that a launch can be checked on a machine without GPUs.
DRY_RUN="${DRY_RUN:-0}"

run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    local arg words=()
    for arg in "$@"; do
      if [[ "${arg}" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then words+=("${arg}"); else words+=("$(printf '%q' "${arg}")"); fi
    done
    echo "${words[*]}"
  else
    exec "$@"
  fi
}
