#!/usr/bin/env bash
# A flashsale cluster on this machine, for trying cluster mode: three
# nats-server nodes (JetStream, clustered) and two flashsale-server nodes.
# Snapshots every 10 s here (FLASHSALE_SNAPSHOT_INTERVAL), so a killed and
# restarted node shows the snapshot restore in its log.
#
#   scripts/local-cluster.sh start [DIR]        build, start everything, wait for a leader
#   scripts/local-cluster.sh status [DIR]       which processes run, and who leads
#   scripts/local-cluster.sh kill-leader [DIR]  kill -9 the flashsale leader (a standby takes over)
#   scripts/local-cluster.sh restart [DIR]      start again every flashsale node that is not running
#   scripts/local-cluster.sh stop [DIR]         stop everything (SIGTERM) and keep DIR
#
# DIR (default ./cluster-data) holds each process's data, log and pid.
# Ports: NATS clients 14222-14224, NATS routes 16222-16224, flashsale nodes
# 127.0.0.1:7801 (node a) and 127.0.0.1:7802 (node b). Clients connect with
# every node's address: --addr 127.0.0.1:7801,127.0.0.1:7802.
#
# The first leader creates the demo data (--demo) with the admin password
# FLASHSALE_ADMIN_PASSWORD, or else FLASHSALE_PASSWORD, or else a random one
# printed in DIR/a.log or DIR/b.log. Needs nats-server (apt-get install
# nats-server) and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:-}
dir=${2:-./cluster-data}
nats_ports=(14222 14223 14224)
route_ports=(16222 16223 16224)
nodes=(a b)
declare -A listen=([a]=127.0.0.1:7801 [b]=127.0.0.1:7802)
server_bin=target/release/flashsale-server

nats_urls() {
  local urls=() port
  for port in "${nats_ports[@]}"; do urls+=("nats://127.0.0.1:$port"); done
  (IFS=,; echo "${urls[*]}")
}

routes() {
  local routes=() port
  for port in "${route_ports[@]}"; do routes+=("nats://127.0.0.1:$port"); done
  (IFS=,; echo "${routes[*]}")
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# True when HOST:PORT answers a flashsale Hello with Welcome (only the
# leader does; a standby answers NotLeader). See .ci/readme for the bytes.
welcomes() {
  local host=${1%:*} port=${1##*:} answer
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf '\x00\x00\x00\x05\x00\x02\x02ci' >&3
  answer=$(timeout 5 head -c 6 <&3 | od -An -tx1 | tr -d ' \n') || true
  exec 3>&- 3<&-
  [[ ${#answer} == 12 && ${answer:8:4} == 0002 ]]
}

leader() {
  local node
  for node in "${nodes[@]}"; do
    if running "$dir/$node.pid" && welcomes "${listen[$node]}"; then
      echo "$node"
      return 0
    fi
  done
  return 1
}

wait_for_leader() {
  local waited=0
  until leader >/dev/null; do
    if (( waited >= 600 )); then
      echo "no flashsale leader after 60 s; see $dir/*.log" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "leader: node $(leader) (${listen[$(leader)]})"
}

start_nats() {
  local i=$1 name="nats$1"
  mkdir -p "$dir/$name"
  running "$dir/$name.pid" && return 0
  nats-server -a 127.0.0.1 -p "${nats_ports[$i]}" -n "$name" --cluster_name flashsale-local \
    --cluster "nats://127.0.0.1:${route_ports[$i]}" --routes "$(routes)" -js -sd "$dir/$name" \
    >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

start_node() {
  local node=$1
  running "$dir/$node.pid" && return 0
  FLASHSALE_ADMIN_PASSWORD=${FLASHSALE_ADMIN_PASSWORD:-${FLASHSALE_PASSWORD:-}} \
    FLASHSALE_SNAPSHOT_INTERVAL=${FLASHSALE_SNAPSHOT_INTERVAL:-10} \
    "$server_bin" --data-dir "$dir/$node" --listen "${listen[$node]}" --demo \
    --cluster "$(nats_urls)" --node-id "$node" --advertise "${listen[$node]}" \
    >>"$dir/$node.log" 2>&1 &
  echo $! >"$dir/$node.pid"
  echo "started flashsale node $node on ${listen[$node]} (log: $dir/$node.log)"
}

stop_pid() {
  local file=$1
  if running "$file"; then
    kill -TERM "$(cat "$file")"
    local waited=0
    while running "$file" && (( waited < 300 )); do sleep 0.1; waited=$((waited + 1)); done
  fi
  rm -f "$file"
}

case $command in
  start)
    command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
    mkdir -p "$dir"
    cargo build --release --quiet --bin flashsale-server
    for i in 0 1 2; do start_nats "$i"; done
    for node in "${nodes[@]}"; do start_node "$node"; done
    wait_for_leader
    # The first leader creates the demo data just after it takes over.
    waited=0
    until cat "$dir"/a.log "$dir"/b.log 2>/dev/null | grep -q "demo data"; do
      if (( waited >= 300 )); then echo "the leader made no demo data within 30 s" >&2; exit 1; fi
      sleep 0.1
      waited=$((waited + 1))
    done
    ;;
  status)
    for i in 0 1 2; do
      if running "$dir/nats$i.pid"; then echo "nats$i: running (127.0.0.1:${nats_ports[$i]})"; else echo "nats$i: stopped"; fi
    done
    for node in "${nodes[@]}"; do
      if running "$dir/$node.pid"; then echo "node $node: running (${listen[$node]})"; else echo "node $node: stopped"; fi
    done
    if node=$(leader); then echo "leader: node $node"; else echo "no leader right now"; fi
    ;;
  kill-leader)
    node=$(leader) || { echo "no leader to kill" >&2; exit 1; }
    kill -KILL "$(cat "$dir/$node.pid")"
    rm -f "$dir/$node.pid"
    echo "killed the leader, node $node (${listen[$node]}), with SIGKILL"
    wait_for_leader
    ;;
  restart)
    for node in "${nodes[@]}"; do start_node "$node"; done
    wait_for_leader
    ;;
  stop)
    for node in "${nodes[@]}"; do stop_pid "$dir/$node.pid"; done
    for i in 0 1 2; do stop_pid "$dir/nats$i.pid"; done
    echo "stopped; the data stays in $dir"
    ;;
  *)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
