#!/usr/bin/env bash
# A Cloud TPU slice for rlp_jax through a queued resource: request it (spot or on-demand), install
# the repository into a Python >= 3.11 virtualenv on every worker, mount shared storage for the
# workdir and the data, run the same command on all workers, stream the logs, and recreate the
# slice and rerun the command when it is preempted (the rerun resumes from the last checkpoint).
#
#   launch/tpu_pod.sh up --config=configs/nano12b.py --workdir=/mnt/shared/runs/n12 [--config.k=v ...]
#                                   # all of the below in a loop: create, wait, install, mount, run,
#                                   # watch; a preempted slice is deleted, recreated and the same
#                                   # command rerun; ends when the run prints `done at step N`
#   launch/tpu_pod.sh create        # request the queued resource and wait until it is ACTIVE
#   launch/tpu_pod.sh wait          # wait until the queued resource is ACTIVE
#   launch/tpu_pod.sh status        # describe the queued resource (state, node)
#   launch/tpu_pod.sh list          # the queued resources of the zone
#   launch/tpu_pod.sh install       # copy the working tree to every worker; venv + pip install .[tpu]
#   launch/tpu_pod.sh mount         # mount NFS_SHARE or GCS_BUCKET at SHARED_MOUNT on every worker
#   launch/tpu_pod.sh run ARGS      # start `python -m rlp_jax.main ARGS` detached on every worker
#   launch/tpu_pod.sh logs          # stream worker 0's log (the one with metrics); WORKER=3 another
#   launch/tpu_pod.sh stop          # SIGTERM on every worker: the run saves a checkpoint, exits 0
#   launch/tpu_pod.sh delete        # delete the queued resource and its slice
#
# Settings (environment): TPU_NAME (rlp-jax: the node), QR_NAME (TPU_NAME-qr: the queued resource),
# ZONE (us-east5-a), ACCELERATOR (v5p-64), RUNTIME_VERSION (v2-alpha-tpuv5), PROJECT (gcloud's
# default), SPOT=1 for spot capacity; on the workers: REMOTE_DIR (~/rlp_jax), VENV (~/rlp_jax_venv),
# PYTHON (python3.11), SHARED_MOUNT (/mnt/shared) with NFS_SHARE (Filestore, ip:/share) or
# GCS_BUCKET (gcsfuse); `up`: POLL_SECONDS (60), GRACE_POLLS (5), MAX_RECREATES (20).
# DRY_RUN=1 prints every command instead of running it (`up`: one pass of its loop).
#
# The workdir and data must be on SHARED_MOUNT: every worker writes its checkpoint shards into the
# same directory, and a recreated slice finds them there. gs:// workdirs are refused by rlp_jax.main
# until it reads and writes gs:// paths itself; until then mount the bucket with GCS_BUCKET.
set -euo pipefail

TPU_NAME=${TPU_NAME:-rlp-jax}
QR_NAME=${QR_NAME:-${TPU_NAME}-qr}
ZONE=${ZONE:-us-east5-a}
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
SPOT=${SPOT:-0}
REMOTE_DIR=${REMOTE_DIR:-'~/rlp_jax'}  # expanded on the workers; no spaces
VENV=${VENV:-'~/rlp_jax_venv'}
PYTHON=${PYTHON:-python3.11}
SHARED_MOUNT=${SHARED_MOUNT:-/mnt/shared}
NFS_SHARE=${NFS_SHARE:-}
GCS_BUCKET=${GCS_BUCKET:-}
POLL_SECONDS=${POLL_SECONDS:-60}
GRACE_POLLS=${GRACE_POLLS:-5}
MAX_RECREATES=${MAX_RECREATES:-20}
STREAM_LOGS=${STREAM_LOGS:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCHIVE=${ARCHIVE:-/tmp/rlp_jax_src.tar.gz}
LOG='~/rlp_jax.log'
exec 3>&1  # printed commands go here, also from inside $(...)

quote() {  # one argument as a shell word: bare when safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

dry_run() { [[ "${DRY_RUN:-0}" == 1 ]]; }

run() {  # prints the command (DRY_RUN=1) or runs it
  if dry_run; then
    local words=() arg
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    echo "${words[*]}" >&3
  else
    "$@"
  fi
}

say() { echo "[tpu_pod] $*" >&2; }

project() { if [[ -n "${PROJECT:-}" ]]; then echo "--project=$PROJECT"; fi; }

qr() {  # gcloud compute tpus queued-resources SUBCOMMAND QR_NAME ... with zone and project
  local subcommand=$1
  shift
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources "$subcommand" "$QR_NAME" --zone="$ZONE" $(project) "$@"
}

tpu_ssh() {  # gcloud compute tpus tpu-vm ssh TPU_NAME --worker=WORKER --command=COMMAND
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $(project) --worker="$1" \
    --command="$2"
}

on_all_workers() { tpu_ssh all "$1"; }

worker() {  # the command line of launch/tpu_worker.sh ACTION on a worker, with its settings
  local action=$1
  shift
  local words=("cd $REMOTE_DIR &&" "VENV=$VENV" "PYTHON=$(quote "$PYTHON")" "LOG=$LOG") arg
  words+=("SHARED_MOUNT=$(quote "$SHARED_MOUNT")")
  [[ -z "$NFS_SHARE" ]] || words+=("NFS_SHARE=$(quote "$NFS_SHARE")")
  [[ -z "$GCS_BUCKET" ]] || words+=("GCS_BUCKET=$(quote "$GCS_BUCKET")")
  words+=(bash launch/tpu_worker.sh "$action")
  for arg in "$@"; do words+=("$(quote "$arg")"); done
  echo "${words[*]}"
}

qr_state() {  # ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...; empty when there is none
  qr describe --format='value(state.state)' 2>/dev/null || true
}

worker0_status() {  # running | done | exit N | none; empty when worker 0 does not answer
  tpu_ssh 0 "$(worker status)" 2>/dev/null | tail -n 1 || true
}

pause() { if ! dry_run; then sleep "$POLL_SECONDS"; fi; }

create() {
  # shellcheck disable=SC2046
  qr create --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$RUNTIME_VERSION" $([[ "$SPOT" == 1 ]] && echo --spot)
}

wait_active() {  # 0 once ACTIVE; 1 when the request failed or its slice is gone
  local state
  while :; do
    state=$(qr_state)
    dry_run && return 0
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDING|SUSPENDED|'') say "queued resource $QR_NAME: ${state:-gone}"; return 1 ;;
      *) say "queued resource $QR_NAME: $state"; pause ;;
    esac
  done
}

install() {
  # The working tree as it is (no .git), copied to every worker and installed there.
  run tar czf "$ARCHIVE" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=./build --exclude=./dist -C "$REPO" .
  # scp names the node in its destination (NAME:path), not as the first argument.
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME:rlp_jax_src.tar.gz" --worker=all \
    --zone="$ZONE" $(project)
  on_all_workers "mkdir -p $REMOTE_DIR && tar xzf ~/rlp_jax_src.tar.gz -C $REMOTE_DIR && $(worker setup)"
}

mount() { on_all_workers "$(worker mount)"; }

check_run_args() {
  local args=("$@") i workdir=''
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      --workdir=*) workdir=${args[i]#--workdir=} ;;
      --workdir) workdir=${args[i + 1]:-} ;;
    esac
  done
  if [[ -z "$workdir" ]]; then
    echo 'give --workdir=DIR on the shared mount (e.g. --workdir=/mnt/shared/runs/NAME)' >&2
    exit 2
  fi
  if [[ "$workdir" == *://* ]]; then
    echo "--workdir=$workdir: rlp_jax.main does not take gs:// workdirs yet; mount the bucket" \
      "(GCS_BUCKET=... launch/tpu_pod.sh mount) and pass $SHARED_MOUNT/..." >&2
    exit 2
  fi
  if [[ "$workdir" != "$SHARED_MOUNT"/* ]]; then
    say "warning: --workdir=$workdir is not under SHARED_MOUNT=$SHARED_MOUNT; every worker must" \
      "see the same directory"
  fi
}

start_run() {  # detached, so the ssh sessions return; each worker logs to ~/rlp_jax.log
  on_all_workers "$(worker start "$@")"
}

log_pid=''
stream_logs() {  # follows worker 0's log in the background (in the foreground when printing)
  [[ "$STREAM_LOGS" == 1 ]] || return 0
  if dry_run; then
    tpu_ssh 0 "tail -n +1 -F $LOG"
  else
    tpu_ssh 0 "tail -n +1 -F $LOG" &
    log_pid=$!
  fi
}

stop_streaming() {
  if [[ -n "$log_pid" ]]; then
    kill "$log_pid" 2>/dev/null || true
    wait "$log_pid" 2>/dev/null || true
    log_pid=''
  fi
}

settled_state() {  # the slice's state after up to GRACE_POLLS polls (a preemption takes a while)
  local state i
  for ((i = 0; i < GRACE_POLLS; i++)); do
    state=$(qr_state)
    [[ "$state" == ACTIVE ]] || break
    pause
  done
  echo "$state"
}

watch_run() {  # echoes done | preempted | restart | failed
  local state status
  while :; do
    pause
    state=$(qr_state)
    if ! dry_run && [[ "$state" != ACTIVE ]]; then echo preempted; return; fi
    status=$(worker0_status)
    dry_run && { echo done; return; }
    case "$status" in
      done) echo done; return ;;
      'exit 0')  # stopped by a signal (SIGTERM of a preemption or maintenance): checkpoint saved
        if [[ "$(settled_state)" != ACTIVE ]]; then echo preempted; else echo restart; fi
        return ;;
      exit*)
        if [[ "$(settled_state)" != ACTIVE ]]; then echo preempted; else echo failed; fi
        return ;;
      *) ;;  # running, or worker 0 did not answer: ask the slice again
    esac
  done
}

up() {
  check_run_args "$@"
  trap stop_streaming EXIT
  local recreates=0 fresh=1 state outcome
  while :; do
    state=$(qr_state)
    if [[ "$state" != ACTIVE ]]; then
      if [[ -n "$state" ]]; then
        say "queued resource $QR_NAME is $state: deleting it to request the slice again"
        qr delete --force --quiet
      fi
      create
      fresh=1
      if ! wait_active; then
        recreates=$((recreates + 1))
        ((recreates <= MAX_RECREATES)) || { say "gave up after $MAX_RECREATES recreations"; exit 1; }
        continue
      fi
    fi
    if ((fresh)); then
      if ! { install && mount; }; then
        [[ "$(qr_state)" != ACTIVE ]] && continue  # preempted while installing
        say 'install or mount failed on an ACTIVE slice'
        exit 1
      fi
      fresh=0
    fi
    say "starting the run on $TPU_NAME (it resumes from the latest checkpoint in the workdir)"
    start_run "$@"
    stream_logs
    outcome=$(watch_run)
    stop_streaming
    case "$outcome" in
      done) say 'the run is done'; return 0 ;;
      restart) say 'the run stopped on a signal while the slice stayed: rerunning it' ;;
      failed)
        say "the run failed on an ACTIVE slice: see 'launch/tpu_pod.sh logs'"
        exit 1 ;;
      preempted)
        recreates=$((recreates + 1))
        ((recreates <= MAX_RECREATES)) || { say "gave up after $MAX_RECREATES recreations"; exit 1; }
        say "slice preempted: recreating it ($recreates/$MAX_RECREATES)" ;;
    esac
  done
}

usage() {
  sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

action=${1:-}
[[ -n "$action" ]] || usage
shift

case "$action" in
  up) up "$@" ;;
  create) create && wait_active ;;
  wait) wait_active ;;
  status) qr describe ;;
  # shellcheck disable=SC2046
  list) run gcloud compute tpus queued-resources list --zone="$ZONE" $(project) ;;
  install) install ;;
  mount) mount ;;
  run)
    [[ $# -gt 0 ]] || { echo 'run: give the rlp_jax.main arguments (--config=... --workdir=...)' >&2; exit 2; }
    check_run_args "$@"
    start_run "$@"
    ;;
  logs) tpu_ssh "${WORKER:-0}" "tail -n +1 -F $LOG" ;;
  stop) on_all_workers "$(worker stop)" ;;
  delete) qr delete --force --quiet ;;
  *) usage ;;
esac
