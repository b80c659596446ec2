#!/usr/bin/env bash
# bench/gpu_decode_bench.py on the lent accelerator (the `device` tool's H200), with nothing
# fetched from the network (the machine has none). Two calls, each well inside the 15-minute
# device budget with room to repeat one (the machine starts in 1-2 min; each part prints a
# `RESULT {json}` line as it ends, so a call stopped by its timeout keeps what it measured):
#
#   run(command="bash bench/run_on_device.sh --models qwen3", carry=[".whl"], timeout_s=360)
#   run(command="bash bench/run_on_device.sh --models nano", carry=[".whl"], timeout_s=360)
#
# Estimated on the card (not yet run on one): qwen3 ≈ 3-4 min (generate ≈ 0.5 min, then mostly
# XLA compiles of the sampler, the next-token step and the RLP update), nano ≈ 3-4 min. The
# second call on the still-warm machine also reuses the compilation cache below.
#
# The image (Python 3.12, jax CUDA, flax, optax, transformers, torch, absl-py, PyYAML) lacks
# ml_collections, which rlp_jax.config imports: carry its wheel (.whl/ is git-ignored), fetched
# once here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl ml_collections==1.1.0
# Output: $OUT/bench.log (its last line `BENCH {json}`, which docs/performance.md is filled
# from) and $OUT/gpu.txt (nvidia-smi). BENCH_TIMEOUT: seconds for the bench (default 300).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
if compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c 'import ml_collections' || {
  echo 'ml_collections is missing: carry its wheel in .whl/ (see the top of this script)'; exit 2; }
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/rlp_jax_compile_cache}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/gpu.txt"
timeout "${BENCH_TIMEOUT:-300}" python3 bench/gpu_decode_bench.py "$@" 2>&1 | tee "$OUT/bench.log"
