#!/usr/bin/env bash
# Holds measured: the wide sale with express holds (--flow hold, a share of
# them paid at once, the rest left to expire) against the plain wide sale
# (--flow buy), interleaved run for run, each on a fresh single server.
#
# Usage: benches/holds.sh [runs] [pay-share] [hold-ms]   (defaults 3, 0.7, 2000)
# Needs the release binaries (cargo build --release --bins).
# Output: benches/out/holds/{buy,hold}-N.json and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
share=${2:-0.7}
hold_ms=${3:-2000}
out=benches/out/holds
mkdir -p "$out"
server=target/release/flashsale-server
bench=target/release/flashsale-bench
export FLASHSALE_PASSWORD="holds-bench-$RANDOM$RANDOM"
export FLASHSALE_ADMIN_PASSWORD=$FLASHSALE_PASSWORD
# One partner making many buyers: the abuse limits would refuse most of it.
export FLASHSALE_PAY_RATE_PER_BUYER=off FLASHSALE_PAY_RATE_PER_PARTNER=off \
  FLASHSALE_PAY_RATE_PER_CONNECTION=off FLASHSALE_NEW_BUYERS_PER_PARTNER=off \
  FLASHSALE_LOGIN_RATE_PER_ACCOUNT=off FLASHSALE_LOGIN_RATE_PER_PEER=off
wide="--connections 64 --requests 200000 --products 100 --stock 1000 --pipeline 16 --json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

one_run() {
  local into=$1 pid
  shift
  rm -rf "$work/data"
  "$server" --demo --data-dir "$work/data" --listen 127.0.0.1:7800 >"$work/log" 2>&1 &
  pid=$!
  until grep -q "listening on" "$work/log"; do sleep 0.1; done
  # shellcheck disable=SC2086
  "$bench" --addr 127.0.0.1:7800 $wide "$@" >"$into"
  kill -TERM "$pid" && wait "$pid"
}

figure() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$1" "$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for ((i = 1; i <= runs; i++)); do
  echo "== run $i: plain wide sale (--flow buy)"
  one_run "$out/buy-$i.json" --flow buy
  echo "== run $i: wide sale with holds (--flow hold --pay-share $share --hold-ms $hold_ms)"
  one_run "$out/hold-$i.json" --flow hold --pay-share "$share" --hold-ms "$hold_ms"
done

for f in "$out"/buy-*.json "$out"/hold-*.json; do
  [[ $(figure "$f" invariants_ok) == True ]] || { echo "invariants failed in $f" >&2; exit 1; }
done
buy=$(for ((i = 1; i <= runs; i++)); do figure "$out/buy-$i.json" decisions_per_s; done | median)
hold=$(for ((i = 1; i <= runs; i++)); do figure "$out/hold-$i.json" decisions_per_s; done | median)
holds=$(for ((i = 1; i <= runs; i++)); do figure "$out/hold-$i.json" holds.holds_per_s; done | median)
pays=$(for ((i = 1; i <= runs; i++)); do figure "$out/hold-$i.json" holds.payments_per_s; done | median)
expiries=$(for ((i = 1; i <= runs; i++)); do figure "$out/hold-$i.json" holds.expiries_per_s; done | median)
p99_buy=$(for ((i = 1; i <= runs; i++)); do figure "$out/buy-$i.json" answer_p99_us; done | median)
p99_hold=$(for ((i = 1; i <= runs; i++)); do figure "$out/hold-$i.json" answer_p99_us; done | median)
printf 'median of %d runs\n' "$runs"
printf '  plain wide sale   %.0f decisions/s   answer p99 %s µs\n' "$buy" "$p99_buy"
printf '  with holds        %.0f decisions/s   answer p99 %s µs   (ratio %.2f)\n' "$hold" "$p99_hold" "$(python3 -c "print($hold/$buy)")"
printf '                    %.0f holds/s, %.0f payments/s, %.0f expiries/s\n' "$holds" "$pays" "$expiries"
