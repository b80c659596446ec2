#!/usr/bin/env bash
# Cloud TPU VM pod for rlp_jax: create it, install the repo on every worker, run the same command
# on all workers, stream the logs, stop the run and tear the pod down.
#
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh install
#   launch/tpu_pod.sh run --config=configs/nano12b.py --workdir=/mnt/shared/runs/nano12b [--config.k=v ...]
#   launch/tpu_pod.sh logs          # worker 0 (the only one that prints metrics); WORKER=3 for another
#   launch/tpu_pod.sh stop          # ends the run on every worker (it checkpoints only at its interval)
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (rlp-jax), ZONE (us-east5-a), ACCELERATOR (v5p-64),
# RUNTIME_VERSION (v2-alpha-tpuv5), PROJECT (gcloud's default), SPOT=1 for a spot pod,
# REMOTE_DIR (~/rlp_jax on the workers), PYTHON (python3 on the workers).
# DRY_RUN=1 prints every command instead of running it.
#
# The workdir must be one directory that all workers share (a Filestore NFS mount or a gcsfuse
# mount at the same path on each worker): every worker writes its checkpoint shards there.
set -euo pipefail

TPU_NAME=${TPU_NAME:-rlp-jax}
ZONE=${ZONE:-us-east5-a}
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
REMOTE_DIR=${REMOTE_DIR:-'~/rlp_jax'}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${ARCHIVE:-/tmp/rlp_jax_src.tar.gz}

quote() {  # one argument as a shell word: bare when safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {  # prints the command (DRY_RUN=1) or runs it
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local words=() arg
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND NAME ... with zone and project
  local subcommand=$1
  shift
  run gcloud compute tpus tpu-vm "$subcommand" "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} "$@"
}

on_all_workers() {
  tpu ssh --worker=all --command="$1"
}

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

action=${1:-}
[[ -n "$action" ]] || usage
shift

case "$action" in
  create)
    tpu create --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" \
      ${SPOT:+--spot}
    ;;
  install)
    # The working tree as it is (no .git), copied to every worker and installed there.
    run tar czf "$ARCHIVE" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ \
      -C "$REPO" .
    # scp names the pod in its destination (NAME:path), not as the first argument.
    run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME:rlp_jax_src.tar.gz" --worker=all \
      --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
    on_all_workers "mkdir -p $REMOTE_DIR && tar xzf ~/rlp_jax_src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && $PYTHON -m pip install -U 'jax[tpu]' && $PYTHON -m pip install -e ."
    ;;
  run)
    [[ $# -gt 0 ]] || { echo 'run: give the rlp_jax.main arguments (--config=... --workdir=...)' >&2; exit 2; }
    words=()
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    # Detached, so the ssh sessions return; each worker logs to ~/rlp_jax.log.
    on_all_workers "cd $REMOTE_DIR && nohup $PYTHON -m rlp_jax.main ${words[*]} > ~/rlp_jax.log 2>&1 & echo \$! > ~/rlp_jax.pid"
    ;;
  logs)
    tpu ssh --worker="${WORKER:-0}" --command='tail -n +1 -F ~/rlp_jax.log'
    ;;
  stop)
    on_all_workers 'kill $(cat ~/rlp_jax.pid)'
    ;;
  delete)
    tpu delete --quiet
    ;;
  *)
    usage
    ;;
esac
