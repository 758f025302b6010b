#!/usr/bin/env bash
# The GPU session's one prepared check: install memtrace into the machine's Python (no network), record the
# environment, check benchmarks/results/cuda-facts.md, then `memtrace verify --device cuda` over every case
# and, beside it, a short real run under memtrace.monitor.
# bash benchmarks/gpu/run.sh OUT_DIR [verify_cases.py flags...]
# SKIP_FACTS=1 / SKIP_MONITOR=1 skip those parts; VERIFY_TIMEOUT / MONITOR_TIMEOUT bound the two parts (seconds).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT_DIR}; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/log.txt" 2>&1; then
  # fall back to the installed layout by hand: memtrace/, memtrace/tracer, memtrace/cli
  site=/tmp/memtrace-site; rm -rf "$site"; mkdir -p "$site"
  cp -r src/memtrace "$site/" && cp -r tracer "$site/memtrace/tracer" && cp -r cli "$site/memtrace/cli"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import memtrace.tracer.simulate, torch; print('memtrace ok, torch', torch.__version__)" 2>&1 | tee -a "$out/log.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/log.txt"
if [ -z "${SKIP_FACTS:-}" ]; then
  timeout 120 python3 benchmarks/gpu/cuda_facts.py >"$out/facts.json" 2>>"$out/log.txt"
  echo "facts rc=$?" | tee -a "$out/log.txt"
fi
# memtrace.monitor on a short real run: predicted beside measured (seed CNN loops, GPT-2 through the Trainer)
[ -n "${SKIP_MONITOR:-}" ] || ( timeout "${MONITOR_TIMEOUT:-150}" python3 benchmarks/gpu/monitor_run.py --out "$out/monitor" \
    >"$out/monitor.json" 2>"$out/monitor.log"; echo "monitor rc=$?" >>"$out/monitor.log" ) &
timeout "${VERIFY_TIMEOUT:-330}" python3 benchmarks/gpu/verify_cases.py --out "$out" "$@" 2>&1 | tee -a "$out/log.txt"
echo "verify rc=$?" | tee -a "$out/log.txt"
wait
if [ -z "${SKIP_MONITOR:-}" ]; then
  tail -3 "$out/monitor.log" | tee -a "$out/log.txt"; cat "$out/monitor.log" >>"$out/log.txt"; rm -f "$out/monitor.log"
  rm -rf "$out/monitor/hf"
  tar -czf "$out/monitor.tgz" -C "$out" monitor && rm -rf "$out/monitor"
fi
