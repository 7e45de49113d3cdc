#!/usr/bin/env bash
# Two flashsale-server binaries side by side: the same load harness against
# a fresh process of each, interleaved run for run (A, B, A, B, ...), on a
# fresh data dir each time, without the pay rate limits; prints the median
# of each figure per binary and the ratio B / A.
#
# Usage: benches/compare.sh SERVER_A SERVER_B [runs] [harness] [harness_b]
#   e.g. benches/compare.sh /tmp/base/target/release/flashsale-server \
#                           target/release/flashsale-server 5
# harness_b, when given, is the harness for SERVER_B (each release with its
# own harness: a newer client may use requests an older server lacks).
# The harness defaults to target/release/flashsale-bench (build it first:
# cargo build --release --bins). The machine drifts by a quarter within an
# hour: only interleaved runs compare.
set -euo pipefail
cd "$(dirname "$0")/.."
server_a=$1
server_b=$2
runs=${3:-5}
bench_a=${4:-target/release/flashsale-bench}
bench_b=${5:-$bench_a}
password="compare-$RANDOM$RANDOM"
common="--connections 64 --requests 200000 --json"
declare -A scenarios=(
  ["storm-p16"]="--products 1 --stock 1000 --pipeline 16"
  ["storm-p1"]="--products 1 --stock 1000 --pipeline 1"
  ["wide-p16"]="--products 100 --stock 1000 --pipeline 16"
)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The abuse limits of server $1 that a run of one partner making many buyers
# would trip, turned off: only those the binary knows (an older base may
# not have them all).
limits_off() {
  local server=$1 flag help
  help=$("$server" --help)
  for flag in --pay-rate-per-partner --new-buyers-per-partner \
    --login-rate-per-account --login-rate-per-peer; do
    if grep -q -- "$flag" <<<"$help"; then printf '%s off ' "$flag"; fi
  done
}

# Runs the harness once against a fresh process of server $1; appends the
# JSON line to $2.
run_once() {
  local server=$1 into=$2 flags=$3 bench=$4 dir port pid
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  : >"$dir.log"
  # shellcheck disable=SC2046
  FLASHSALE_ADMIN_PASSWORD=$password "$server" --demo --data-dir "$dir" \
    --listen "127.0.0.1:$port" --pay-rate-per-buyer off --pay-rate-per-connection off \
    $(limits_off "$server") >"$dir.log" 2>&1 &
  pid=$!
  until grep -q "listening on" "$dir.log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir.log" >&2; exit 1; }
    sleep 0.1
  done
  # shellcheck disable=SC2086
  local failed=0
  "$bench" --addr "127.0.0.1:$port" --user admin --password "$password" $common $flags >>"$into" || failed=1
  kill -TERM "$pid"
  wait "$pid" || true
  rm -rf "$dir" "$dir.log"
  # A failed run stops the comparison, but never leaves its server behind.
  if [ "$failed" = 1 ]; then echo "the harness failed against $server" >&2; exit 1; fi
}

for name in storm-p16 storm-p1 wide-p16; do
  for _ in $(seq "$runs"); do
    run_once "$server_a" "$out/$name.a" "${scenarios[$name]}" "$bench_a"
    run_once "$server_b" "$out/$name.b" "${scenarios[$name]}" "$bench_b"
  done
  python3 - "$name" "$out/$name.a" "$out/$name.b" <<'EOF'
import json, statistics, sys
name, a_path, b_path = sys.argv[1:4]
def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]
a, b = load(a_path), load(b_path)
def med(rows, key):
    return statistics.median(r[key] for r in rows)
ok = all(r["invariants_ok"] for r in a + b)
for key in ["decisions_per_s", "answer_p50_us", "answer_p99_us"]:
    ma, mb = med(a, key), med(b, key)
    print(f"{name:10} {key:16} A={ma:10.0f} B={mb:10.0f} B/A={mb / ma:5.2f}")
print(f"{name:10} decisions_per_s runs A={[round(r['decisions_per_s']) for r in a]}")
print(f"{name:10} decisions_per_s runs B={[round(r['decisions_per_s']) for r in b]}")
print(f"{name:10} invariants_ok={ok}")
EOF
done
