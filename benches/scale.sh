#!/usr/bin/env bash
# The "scale" scenario of BENCHMARKS.md: 100 000 buyers, 10 000 products and
# 1 000 000 orders in the data dir; then the server's peak memory, the time
# from start to serving, and pay throughput on the big data dir.
# Usage: benches/scale.sh [data-dir]
#   after: cargo build --release -p flashsale-server --bin flashsale-server && cargo build --release --bin flashsale-bench
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/flashsale-scale}
addr=127.0.0.1:7990
export FLASHSALE_ADMIN_PASSWORD=scale-admin-password
server=target/release/flashsale-server
bench=target/release/flashsale-bench
rm -rf "$dir"

start_server() {
  local t0 out
  t0=$(date +%s.%N)
  out=$(mktemp)
  RUST_LOG=warn "$server" --data-dir "$dir" --listen "$addr" --demo \
    --pay-rate-per-partner off --new-buyers-per-partner off \
    --login-rate-per-account off --login-rate-per-peer off > "$out" &
  pid=$!
  until grep -q "listening on" "$out"; do
    kill -0 "$pid" 2>/dev/null || { echo "the server failed to start" >&2; exit 1; }
    sleep 0.05
  done
  echo "server pid $pid ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
}
trap 'kill "${pid:-0}" 2>/dev/null || true' EXIT
peak_rss() { grep VmHWM "/proc/$pid/status"; }
stop_server() { kill -TERM "$pid"; wait "$pid"; }

small_sale() {
  "$bench" --addr "$addr" --user admin --password "$FLASHSALE_ADMIN_PASSWORD" \
    --buyers 10000 --products 100 --stock 1000 --requests 200000 \
    --connections 64 --pipeline 16 --seed "$1" --json
}

start_server
echo "small-data baseline:"
small_sale 6
echo "filling: 100 000 buyers, 10 000 products, 1 000 000 orders"
"$bench" --addr "$addr" --user admin --password "$FLASHSALE_ADMIN_PASSWORD" \
  --buyers 100000 --products 10000 --stock 100 --requests 1000000 \
  --connections 64 --pipeline 16 --seed 7 --json
peak_rss
stop_server
echo "data dir: $(du -sh "$dir" | cut -f1)"
start_server
peak_rss
echo "the same small sale on the big data dir:"
small_sale 8
peak_rss
stop_server
