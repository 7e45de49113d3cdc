#!/usr/bin/env bash
# The harness scenarios of BENCHMARKS.md, each run N times (default 5) on an
# embedded server; prints the median of each figure.
# Usage: benches/scenarios.sh [runs]   (after: cargo build --release --bin flashsale-bench)
# The embedded server runs without the per-connection and per-partner pay
# limits, the login rates and the new-buyer rate (see the harness's set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bench=target/release/flashsale-bench
common="--embedded --connections 64 --requests 200000 --json"
declare -A scenarios=(
  ["storm-p16"]="--products 1 --stock 1000 --pipeline 16"
  ["storm-p1"]="--products 1 --stock 1000 --pipeline 1"
  ["wide-p16"]="--products 100 --stock 1000 --pipeline 16"
  ["wide-p16-relaxed"]="--products 100 --stock 1000 --pipeline 16 --sync relaxed"
)
for name in storm-p16 storm-p1 wide-p16 wide-p16-relaxed; do
  for _ in $(seq "$runs"); do
    # shellcheck disable=SC2086
    "$bench" $common ${scenarios[$name]}
  done | python3 -c '
import json, statistics, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
keys = ["decisions_per_s", "confirmed_per_s", "answer_p50_us", "answer_p99_us", "answer_p999_us", "outcome_p99_us"]
med = {k: statistics.median(r[k] for r in rows) for k in keys}
ok = all(r["invariants_ok"] for r in rows)
print(sys.argv[1], "runs", len(rows), " ".join(f"{k}={med[k]:.0f}" for k in keys),
      "range_decisions_per_s=%.0f..%.0f" % (min(r["decisions_per_s"] for r in rows), max(r["decisions_per_s"] for r in rows)),
      "invariants_ok", ok)
' "$name"
done
