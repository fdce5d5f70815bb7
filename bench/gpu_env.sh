# Sourced by bench/gpu_*.sh on the device machine: installs the carried wheels into /tmp/site once per machine (.whl:
# bitsandbytes, trl, deepspeed, liger-kernel, ...; then .whl-gptq when carried, so its copy of a shared package wins)
# and sets PYTHONPATH.  A lock keeps two scripts started together by bench/gpu_parallel.sh from installing at once.
install_wheels() {
  if [ ! -f /tmp/site/.tunekit-installed ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || return 1
    if ls .whl-gptq/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl-gptq/*.whl || echo "warning: installing .whl-gptq failed; GPTQ steps will fail and be recorded" >&2
    fi
    touch /tmp/site/.tunekit-installed
  fi
}
mkdir -p /tmp/site
( flock 9; install_wheels ) 9>/tmp/site.lock || { echo "installing the carried wheels failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site
export HF_HOME=/tmp/hf HF_HUB_OFFLINE=1   # tokenicer (gptqmodel) moves HF_HOME otherwise; nothing is downloaded
