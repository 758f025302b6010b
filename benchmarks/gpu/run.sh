#!/usr/bin/env bash
# The GPU session's one prepared script (issues 21-24), in parts that run side by side, each under its own
# timeout and each writing its tables into OUT as it goes, so a part cut short still leaves its rows:
#   setup    memtrace into the machine's Python (no network); bitsandbytes from a carried .whl/ if there
#   facts    benchmarks/gpu/cuda_facts.py -> facts.json                                  (FACTS_TIMEOUT 90)
#   monitor  benchmarks/gpu/monitor_run.py -> monitor.json, monitor-log.txt               (MONITOR_TIMEOUT 150)
#   cudnn    collect_cudnn.py: convolution workspaces, then --rnn (issue 24)              (CONV_BUDGET 120, RNN_BUDGET 60)
#   suite    verify_cases.py over the suite (seed, gpt2, llama, sdpa, tv, zoo) -> verify.jsonl/.md (SUITE_TIMEOUT 330)
#   groups   verify_cases.py over gen/ qlora/ compile/ (issues 21-23) -> groups.jsonl/.md  (GROUPS_TIMEOUT 330)
#   collect  collect_results.py OUT -> OUT/summary.md (every table), then OUT packed into results.tgz
# bash benchmarks/gpu/run.sh OUT_DIR
# SKIP=facts,monitor,cudnn,suite,groups skips parts. A dry run here (no GPU): PATH=$PWD/.venv/bin:$PATH
# SKIP_INSTALL=1 DEVICE=cpu SUITE_FILTER=zoo/mlp/ GROUPS_FILTER=gen/gpt2/dynamic-greedy bash benchmarks/gpu/run.sh /tmp/o
# (the CUDA-only parts then skip in one line each). At most 8 files come back from the device tool, so OUT
# ends as log.txt, summary.md, results.tgz (everything) and snapshots.tgz (the suite's memory snapshots).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT_DIR}
mkdir -p "$out/parts"
p="$out/parts"
export PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/log.txt"; }
skip() { [[ ",${SKIP:-}," == *",$1,"* ]]; }
# --- setup
if [ -z "${SKIP_INSTALL:-}" ] && ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$out/log.txt" 2>&1; then
  site=/tmp/memtrace-site; rm -rf "$site"; mkdir -p "$site"  # the installed layout by hand
  cp -r src/memtrace "$site/" && cp -r tracer "$site/memtrace/tracer" && cp -r cli "$site/memtrace/cli"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bnb-site \
    .whl/bitsandbytes-*.whl >>"$out/log.txt" 2>&1 && export PYTHONPATH="/tmp/bnb-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import bitsandbytes" 2>/dev/null && log "bitsandbytes installed" ||
  log "qlora/ will skip: bitsandbytes not carried (.whl/ absent or too large for the 64 MiB carry; README.md)"
python3 -c "import memtrace.tracer.simulate, torch; print('memtrace ok, torch', torch.__version__)" 2>&1 | tee -a "$out/log.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/log.txt"
cuda=$(python3 -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
# --- the parts, side by side (each its own processes: per-process allocator statistics do not mix)
part() {  # part NAME SECONDS COMMAND...: run under a timeout, its output in parts/NAME.log, rc logged
  local name=$1 secs=$2; shift 2
  if skip "$name"; then log "$name skipped (SKIP)"; return; fi
  if [[ " facts monitor cudnn " == *" $name "* && $cuda == 0 ]]; then log "$name skipped: no CUDA device here"; return; fi
  log "$name started (timeout ${secs}s)"
  timeout "$secs" "$@" >"$p/$name.log" 2>&1
  local rc=$?
  log "$name rc=$rc$( [ $rc -eq 124 ] && echo ' (timed out: its rows so far are kept)')"
}
part facts "${FACTS_TIMEOUT:-90}" bash -c "python3 benchmarks/gpu/cuda_facts.py >$p/facts.json" &
part monitor "${MONITOR_TIMEOUT:-150}" bash -c "python3 benchmarks/gpu/monitor_run.py --out $p/monitor >$p/monitor.json" &
part cudnn $(( ${CONV_BUDGET:-120} + ${RNN_BUDGET:-60} + 60 )) bash -c "
  python3 benchmarks/gpu/collect_cudnn.py --budget ${CONV_BUDGET:-120} --batches 1,8,32 --out $p/cudnn-conv.json
  python3 benchmarks/gpu/collect_cudnn.py --rnn --budget ${RNN_BUDGET:-60} --rnn-out $p/cudnn-rnn.json" &
part suite "${SUITE_TIMEOUT:-330}" python3 benchmarks/gpu/verify_cases.py --out "$p" --name verify \
  --jobs "${SUITE_JOBS:-8}" --timeout 150 --exclude gen/,qlora/,compile/ --device "${DEVICE:-cuda}" \
  --filter "${SUITE_FILTER:-}" &
part groups "${GROUPS_TIMEOUT:-330}" python3 benchmarks/gpu/verify_cases.py --out "$p" --name groups \
  --jobs "${GROUPS_JOBS:-6}" --timeout 240 --filter "${GROUPS_FILTER:-gen/,qlora/,compile/}" --device "${DEVICE:-cuda}" &
wait
# --- collect and pack
python3 benchmarks/gpu/collect_results.py "$out" --summary "$out/summary.md" 2>&1 | tail -40 | tee -a "$out/log.txt"
rm -rf "$p/monitor/hf"
(cd "$p" && ls snap_*.pickle >/dev/null 2>&1 && tar -czf "$out/snapshots.tgz" snap_*.pickle && rm -f snap_*.pickle)
tar -czf "$out/results.tgz" -C "$out" parts && rm -rf "$p"
ls -la "$out" | tee -a "$out/log.txt"
