#!/usr/bin/env bash
# The device machine's entry for every suite (run tool; carry [".whl"], ".whl-gptq" for qwen, "bench/reference"):
#   bash bench/gpu.sh SUITE [bench/run.py flags]               one suite on its real shape, into $OUT
#   bash bench/gpu.sh --each 'SUITE [flags]' 'SUITE [flags]'   one job per GPU: CUDA_VISIBLE_DEVICES=i, TMPDIR=/tmp/job<i>,
#                                                              OUT=$OUT/job<i> (with its stdout.log); own baselines
# SUITE=peers: first a call carrying .whl (e.g. `bash bench/gpu.sh throughput ...`), then, within 30 s, one carrying
# [".whl-unsloth", "bench/reference"] for `bash bench/gpu.sh peers` (Unsloth's own SFT path beside the recipe).
# Installs the carried wheels into /tmp/site once per machine (.whl-gptq after .whl, so that its copy of a shared
# package wins), then runs bench/run.py with a deadline so that all of it ends within BUDGET seconds (default 560, under
# the device's 600 s a command): what no longer fits is recorded as skipped and the JSON is always written.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET="${BUDGET:-560}"
OUT="${OUT:-out/bench/gpu}"
install() {
  [ -f /tmp/site/.tunekit-installed ] && return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    return 1
  if ls .whl-gptq/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl-gptq/*.whl || echo "warning: installing .whl-gptq failed; the GPTQ steps will fail and say so" >&2
  fi
  touch /tmp/site/.tunekit-installed
}
# The peers suite's Unsloth wheels (46 MiB) do not fit beside .whl in one carry: one call with .whl installs /tmp/site,
# the next call on the still-warm machine carries .whl-unsloth (and bench/reference) and installs it into
# /tmp/site-u, which only the Unsloth runs put first on their PYTHONPATH (PEER_SITE).
install_peer() {
  [ -f /tmp/site-u/.tunekit-installed ] && return 0
  ls .whl-unsloth/*.whl >/dev/null 2>&1 || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-u \
    .whl-unsloth/*.whl && touch /tmp/site-u/.tunekit-installed
}
mkdir -p /tmp/site "$OUT"
( flock 9; install ) 9>/tmp/site.lock || { echo "installing the carried wheels failed" >&2; exit 1; }
install_peer || echo "warning: installing .whl-unsloth failed; the Unsloth runs will be skipped" >&2
[ -f /tmp/site-u/.tunekit-installed ] && export PEER_SITE=/tmp/site-u
export PYTHONPATH=/tmp/site HF_HOME=/tmp/hf HF_HUB_OFFLINE=1  # gptqmodel moves HF_HOME otherwise; nothing downloads
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
df -h /tmp . | tail -n 2
rc=0 i=0 pids=()
if [ "${1:-}" = --each ]; then
  for job in "${@:2}"; do
    mkdir -p "$OUT/job$i" "/tmp/job$i"
    ( CUDA_VISIBLE_DEVICES=$i TMPDIR=/tmp/job$i OUT="$OUT/job$i" BUDGET=$((BUDGET - SECONDS)) \
        bash -c "bash bench/gpu.sh $job" >"$OUT/job$i/stdout.log" 2>&1
      status=$?; echo "job$i exit $status after ${SECONDS}s: $job"; exit $status ) &
    pids+=($!) i=$((i + 1))
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  rm -f "$OUT"/job*/BENCHMARKS.md  # regenerated here from the JSON files; the device returns 8 files at most
else
  echo "installed in ${SECONDS}s; runner deadline $((BUDGET - SECONDS - 5))s"
  PYTHONUNBUFFERED=1 python3 bench/run.py --suite "${1:?usage: bash bench/gpu.sh SUITE [flags] | --each 'SUITE ...'}" \
    --out "$OUT" --deadline $((BUDGET - SECONDS - 5)) "${@:2}" || rc=$?
  cp BENCHMARKS.md "$OUT/" 2>/dev/null || true
fi
echo "gpu.sh: ${SECONDS}s in all"
exit $rc
