#!/usr/bin/env bash
# Runs on each TPU worker (launch/tpu_pod.sh ships it with the working tree and calls it over ssh).
#
#   bash launch/tpu_worker.sh setup        # Python >= 3.11 venv at VENV, pip install .[tpu] (pinned jax)
#   bash launch/tpu_worker.sh mount        # NFS_SHARE or GCS_BUCKET at SHARED_MOUNT, writable by all
#   bash launch/tpu_worker.sh start ARGS   # `train ARGS` detached, output to LOG
#   bash launch/tpu_worker.sh train ARGS   # python -m rlp_jax.main ARGS; records how it ended
#   bash launch/tpu_worker.sh status       # running | done | exit N | none
#   bash launch/tpu_worker.sh stop         # SIGTERM to the run (it saves a checkpoint and exits 0)
#
# Settings (environment): VENV (~/rlp_jax_venv), PYTHON (python3.11), SHARED_MOUNT (/mnt/shared),
# NFS_SHARE (a Filestore/NFS export, ip:/share) or GCS_BUCKET (a bucket name for gcsfuse),
# LOG (~/rlp_jax.log, where tpu_pod.sh sends the run's output). DRY_RUN=1 prints the commands.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$HOME/rlp_jax_venv}
PYTHON=${PYTHON:-python3.11}
SHARED_MOUNT=${SHARED_MOUNT:-/mnt/shared}
NFS_SHARE=${NFS_SHARE:-}
GCS_BUCKET=${GCS_BUCKET:-}
LOG=${LOG:-$HOME/rlp_jax.log}
STATE_FILE=${STATE_FILE:-$HOME/rlp_jax.state}
PID_FILE=${PID_FILE:-$HOME/rlp_jax.pid}

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
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

fail() { echo "tpu_worker: $*" >&2; exit 1; }

set_state() { echo "$1" > "$STATE_FILE.tmp" && mv -f "$STATE_FILE.tmp" "$STATE_FILE"; }  # atomic

# The runtime images of TPU VMs (Ubuntu 22.04) come with Python 3.10; rlp_jax needs 3.11.
PYTHON_AT_LEAST_3_11='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'

setup() {
  if ! command -v "$PYTHON" > /dev/null && [[ "${DRY_RUN:-0}" != 1 ]]; then
    run sudo apt-get update -q
    run sudo apt-get install -y -q "$PYTHON" "$PYTHON-venv"
  fi
  run "$PYTHON" -c "$PYTHON_AT_LEAST_3_11" || fail "$PYTHON is older than 3.11 (set PYTHON)"
  run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/python" -c "$PYTHON_AT_LEAST_3_11" || fail "$VENV is not Python >= 3.11"
  run "$VENV/bin/python" -m pip install -q -U pip
  # The tpu extra pins jax[tpu] to the jax version the tests run with (pyproject.toml).
  run "$VENV/bin/python" -m pip install -q "$SRC[tpu]"
  run "$VENV/bin/python" -c 'import jax, rlp_jax; print("jax", jax.__version__, "rlp_jax", rlp_jax.__version__)'
}

mount_shared() {
  run sudo mkdir -p "$SHARED_MOUNT"
  if mountpoint -q "$SHARED_MOUNT" 2>/dev/null; then
    echo "$SHARED_MOUNT is mounted already"
  elif [[ -n "$NFS_SHARE" ]]; then
    command -v mount.nfs > /dev/null || run sudo apt-get install -y -q nfs-common
    run sudo mount -t nfs -o rw,hard,noatime "$NFS_SHARE" "$SHARED_MOUNT"
    # The workers' users need not share a uid: the export's root is writable by all, and the run
    # starts with umask 000 (`train`), so each worker can write into the directories of the others.
    run sudo chmod 0777 "$SHARED_MOUNT"
  elif [[ -n "$GCS_BUCKET" ]]; then
    if ! command -v gcsfuse > /dev/null; then
      run sudo bash -c 'echo "deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" > /etc/apt/sources.list.d/gcsfuse.list && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | apt-key add - && apt-get update -q && apt-get install -y -q gcsfuse'
    fi
    run sudo chown "$(id -u):$(id -g)" "$SHARED_MOUNT"
    # Orbax finishes a checkpoint by renaming its temporary directory: gcsfuse renames a directory
    # only up to --rename-dir-limit descendants. Permissions are the mount's (--dir-mode/--file-mode).
    run gcsfuse --implicit-dirs --rename-dir-limit=1000000 --dir-mode=777 --file-mode=666 \
      "$GCS_BUCKET" "$SHARED_MOUNT"
  else
    fail "set NFS_SHARE (Filestore ip:/share) or GCS_BUCKET to mount $SHARED_MOUNT"
  fi
  # Every worker must be able to write there.
  run touch "$SHARED_MOUNT/.rlp_jax_write_test_$(hostname)"
  run rm -f "$SHARED_MOUNT/.rlp_jax_write_test_$(hostname)"
}

start() {  # `train` detached (the ssh session returns), its output in LOG
  [[ $# -gt 0 ]] || fail 'start: give the rlp_jax.main arguments'
  set_state running  # before returning: a poll never sees the previous run's end
  nohup bash "$SRC/launch/tpu_worker.sh" train "$@" > "$LOG" 2>&1 < /dev/null &
  echo "started on $(hostname), logging to $LOG"
}

train() {
  [[ $# -gt 0 ]] || fail 'train: give the rlp_jax.main arguments'
  cd "$SRC"  # `--config=configs/...` is found here (and inside the installed package otherwise)
  umask 000
  set_state running
  echo $$ > "$PID_FILE"
  local status=0
  # exec-less so that the exit status can be recorded; the signal goes to the python process.
  "$VENV/bin/python" -m rlp_jax.main "$@" &
  local child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
  trap 'kill -INT "$child" 2>/dev/null || true' INT
  while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break  # `wait` returned early for a trapped signal
  done
  if [[ $status == 0 ]] && grep -q '^\[rlp_jax\] done at step' "$LOG" 2>/dev/null; then
    set_state done
  else
    set_state "exit $status"
  fi
  return "$status"
}

status() {
  if [[ -f "$STATE_FILE" ]]; then cat "$STATE_FILE"; else echo none; fi
}

stop() {
  [[ -f "$PID_FILE" ]] || { echo 'no run started here'; return 0; }
  run kill -TERM "$(cat "$PID_FILE")"
}

action=${1:-}
shift || true
case "$action" in
  setup) setup ;;
  mount) mount_shared ;;
  start) start "$@" ;;
  train) train "$@" ;;
  status) status ;;
  stop) stop ;;
  *) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
