#!/usr/bin/env bash
# Cluster mode measured: the cost of replication (the wide sale on a
# single process against the same sale on a cluster of three nats-server
# nodes and two flashsale nodes, all on this machine, interleaved run for
# run), and failovers (a leader killed with SIGKILL mid-sale, the pause
# from the harness's --fault report, and a --timeline picture of each).
#
# Usage: benches/cluster.sh [runs] [failovers]   (defaults 3 and 3)
# Needs: nats-server, and the release binaries (cargo build --release --bins).
# Output: benches/out/cluster/{wide-single-N,wide-cluster-N,failover-N}.json,
#         benches/out/cluster/failover-N.svg, and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
failovers=${2:-3}
out=benches/out/cluster
mkdir -p "$out"
server=target/release/flashsale-server
bench=target/release/flashsale-bench
export FLASHSALE_PASSWORD="cluster-bench-$RANDOM$RANDOM"
export FLASHSALE_ADMIN_PASSWORD=$FLASHSALE_PASSWORD
# The harness is one partner making many buyers: the abuse limits would
# refuse most of it (as in benches/compare.sh).
export FLASHSALE_PAY_RATE_PER_BUYER=off FLASHSALE_PAY_RATE_PER_PARTNER=off \
  FLASHSALE_PAY_RATE_PER_CONNECTION=off FLASHSALE_NEW_BUYERS_PER_PARTNER=off \
  FLASHSALE_LOGIN_RATE_PER_ACCOUNT=off FLASHSALE_LOGIN_RATE_PER_PEER=off
wide="--connections 64 --requests 200000 --products 100 --stock 1000 --pipeline 16 --json"
nodes=127.0.0.1:7801,127.0.0.1:7802
work=$(mktemp -d)
trap 'scripts/local-cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

single_run() {
  local into=$1 dir=$work/single pid
  rm -rf "$dir" && mkdir -p "$dir"
  "$server" --demo --data-dir "$dir/data" --listen 127.0.0.1:7800 >"$dir/log" 2>&1 &
  pid=$!
  until grep -q "listening on" "$dir/log"; do sleep 0.1; done
  # shellcheck disable=SC2086
  "$bench" --addr 127.0.0.1:7800 $wide >"$into"
  kill -TERM "$pid" && wait "$pid"
}

cluster_run() {
  local into=$1
  shift
  rm -rf "$work/cluster"
  scripts/local-cluster.sh start "$work/cluster" >/dev/null
  # shellcheck disable=SC2086
  "$bench" --addr "$nodes" "$@" >"$into"
  scripts/local-cluster.sh stop "$work/cluster" >/dev/null
}

figure() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])" "$1" "$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for ((i = 1; i <= runs; i++)); do
  echo "== wide sale, run $i: single process"
  single_run "$out/wide-single-$i.json"
  echo "== wide sale, run $i: cluster (3 NATS, 2 flashsale nodes)"
  # shellcheck disable=SC2086
  cluster_run "$out/wide-cluster-$i.json" $wide
done
for kind in single cluster; do
  for f in decisions_per_s answer_p99_us invariants_ok; do
    printf '%s %s: ' "$kind" "$f"
    for ((i = 1; i <= runs; i++)); do printf '%s ' "$(figure "$out/wide-$kind-$i.json" "$f")"; done
    echo
  done
done
if ((runs > 0)); then
  s=$(for ((i = 1; i <= runs; i++)); do figure "$out/wide-single-$i.json" decisions_per_s; done | median)
  c=$(for ((i = 1; i <= runs; i++)); do figure "$out/wide-cluster-$i.json" decisions_per_s; done | median)
  echo "median decisions/s: single $s, cluster $c, cluster/single $(python3 -c "print(round($c/$s, 2))")"
fi

for ((i = 1; i <= failovers; i++)); do
  echo "== failover run $i: the leader killed 5 s into a 15 s wide sale"
  cluster_run "$out/failover-$i.json" --connections 64 --pipeline 16 --products 100 \
    --stock 100000 --duration 15 --requests 1000000000 --json \
    --fault "5:scripts/local-cluster.sh kill-leader $work/cluster" \
    --timeline "$out/failover-$i.svg"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); f=d['faults'][0]; print('pause', f['pause_ms'], 'ms; recovered', d['recovered'], '; invariants', d['invariants_ok'], '; answers/s', d['answers_per_second'])" "$out/failover-$i.json"
done
