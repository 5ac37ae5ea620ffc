#!/usr/bin/env bash
# Runs ON the device, after stage.sh: the latency-fidelity benchmark
# (benchmarks/bench_latency_fidelity.py, issue 6) against one `vllm serve` on
# the GPU: qeval's probe and vLLM's own `vllm bench serve`, same prompts,
# lengths and concurrency, alternating order per round. Output: $OUT/fidelity/
# (fidelity.json, server log, vllm bench JSONs) and $OUT/fidelity.log.
#
#   bash benchmarks/gpu/run_fidelity.sh [BUDGET_S] [CONCURRENCY...]   (default: 500 s; 1 4 16)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
. "$HERE/env.sh"
BUDGET=${1:-500}
shift $(( $# > 0 ? 1 : 0 ))
CONCURRENCY=(${@:-1 4 16})
OUT=${OUT:-/tmp/qeval-gpu-out}
mkdir -p "$OUT/fidelity"
# On the GPU the requests are short (~2 ms per token), so more of them and a
# third load point than the CPU default; two rounds keep it inside one call (FIDELITY_ROUNDS=4 for more).
timeout --signal=INT --kill-after=20 "$BUDGET" python3 -u benchmarks/bench_latency_fidelity.py \
  --out "$OUT/fidelity" --input-len 128 --output-len 64 --num-prompts 64 --warmups 4 \
  --concurrency "${CONCURRENCY[@]}" --rounds "${FIDELITY_ROUNDS:-2}" 2>&1 | tee "$OUT/fidelity.log"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/fidelity.log"
