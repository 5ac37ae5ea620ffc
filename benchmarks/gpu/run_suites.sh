#!/usr/bin/env bash
# Runs ON the device, after stage.sh has installed the bundle: the GPU suites
# (suites/gpu/*.yaml) through the real CLI, then copies every run directory
# (samples, gate, report.html/md, results.json, junit.xml, logs) into $OUT.
#
#   bash benchmarks/gpu/run_suites.sh [BUDGET_S]
#
# BUDGET_S (default 540) keeps the call inside the device tool's 600 s limit:
# a suite still running then is stopped, and the next call on the still-warm
# machine resumes it (`qeval run --resume` recomputes nothing that finished).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
. "$HERE/env.sh"
BUDGET=${1:-540}
OUT=${OUT:-/tmp/qeval-gpu-out}
REPORTS=/tmp/qeval-reports
mkdir -p "$OUT" "$REPORTS"
# A fresh machine can pick up where an earlier one stopped: carry that call's
# runs.tgz as .stage/resume/runs.tgz and the unfinished runs are resumed.
if [ -f "$REPO/.stage/resume/runs.tgz" ] && [ -z "$(ls -A "$REPORTS")" ]; then
  tar -xzf "$REPO/.stage/resume/runs.tgz" -C "$REPORTS" && echo "restored $(ls "$REPORTS")" | tee -a "$OUT/steps.log"
fi
t0=$(date +%s)
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  python3 -c "import sys, torch, vllm, lm_eval, modelopt, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| vllm', vllm.__version__, '| lm-eval', lm_eval.__version__, '| modelopt', modelopt.__version__, '| transformers', transformers.__version__)"
} > "$OUT/device.txt" 2>&1
for suite in suites/gpu/smoke.yaml suites/gpu/smoke-online.yaml; do
  name=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$suite")
  left=$(( BUDGET - ($(date +%s) - t0) ))
  if [ "$left" -lt 60 ]; then echo "no time left for $suite ($left s)" | tee -a "$OUT/steps.log"; continue; fi
  run=$(ls -d "$REPORTS/$name"-[0-9]* 2>/dev/null | tail -1)
  if [ -n "$run" ]; then args=(run --resume "$run"); else args=(run "$suite" --reports-dir "$REPORTS"); fi
  echo "$(date -u +%T) qeval ${args[*]} (budget $left s)" | tee -a "$OUT/steps.log"
  timeout --signal=INT --kill-after=20 "$left" python3 -m qeval.cli "${args[@]}" >> "$OUT/run-$name.log" 2>&1
  rc=$?  # 124: stopped by SIGINT at the budget; 137: killed 20 s later; both resumable (finished cells are on disk)
  echo "$(date -u +%T) $suite: exit $rc" | tee -a "$OUT/steps.log"
done
# Everything but the engine logs' bulk; one tarball keeps the folder layout.
tar -C "$REPORTS" -czf "$OUT/runs.tgz" . && ls -la "$OUT"
