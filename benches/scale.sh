#!/usr/bin/env bash
# The "scale" scenario of BENCHMARKS.md (issue 13's figures): fill a data
# dir with ORDERS orders in STEPS harness runs against a real
# flashsale-server process, and measure, against orders stored:
#   - the server's peak (VmHWM) and current (VmRSS) memory after each step;
#   - the journal (records on disk, from `flashsale-admin stats --json`);
#   - restart to serving (process start to "listening on") after a kill -9,
#     after a SIGTERM stop, and after one once the order tables caught up,
#     at the steps in RESTART_AT (default the first and the last);
#   - the data dir's size after the fill;
#   - GetOrder latency of orders from the first step (the first million at
#     full scale), read back from the sled tables (flashsale-bench --read-orders);
#   - the wide sale on the filled data dir against the same sale on an
#     empty one (same server flags), WIDE_RUNS of each, interleaved, ratio
#     of the medians.
#
# Usage: benches/scale.sh [data-dir]         (default /tmp/flashsale-scale; wiped first)
#   after: cargo build --release -p flashsale-server --bin flashsale-server \
#          && cargo build --release --bin flashsale-bench \
#          && cargo build --release -p flashsale-client --bin flashsale-admin
# The scale (environment; defaults are the issue's full scale, about an hour):
#   ORDERS=10000000 BUYERS=1000000 PRODUCTS=10000 STEPS=10
#   e.g. ORDERS=300000 BUYERS=20000 PRODUCTS=1000 STEPS=3 benches/scale.sh /tmp/x
# Each step is one harness run with its own seed, partner, BUYERS/STEPS
# buyers and PRODUCTS/STEPS products, stocked so that none sells out (every
# attempt is an order): after the last step the data dir holds ORDERS
# orders of BUYERS buyers for PRODUCTS products.
# Checkpoints scale with the fill: below 10 M orders the server gets
# --checkpoint-records scaled from its default (1 000 at 10 M orders:
# ORDERS / 10 000, at least 10) unless CHECKPOINT_RECORDS says otherwise
# (`default`: the server's own default at any scale).
# Other knobs: RESTART_AT="1 $STEPS" (steps after which to restart),
#   READS=200000 READ_CONNECTIONS=8 READ_PIPELINE=8 (GetOrder reads, in flight
#   = connections x pipeline), WIDE_RUNS=3, SERVER_FLAGS="" (extra flags for
#   every server start, e.g. "--checkpoint-interval 5"), SETTLE_S=600 (longest
#   wait for the order tables to catch up before a SIGTERM stop),
#   SERVER, BENCH, ADMIN (binaries; default target/release/...),
#   OUT=benches/out (scale-results.txt, scale-summary.md, scale.svg, raw/).
# Output: machine-readable lines `scale KIND key=value ...` on stdout (and in
# $OUT/scale-results.txt), progress on stderr, then a markdown summary (also
# $OUT/scale-summary.md) and $OUT/scale.svg (memory and restart time against
# orders stored).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/flashsale-scale}
ORDERS=${ORDERS:-10000000}
BUYERS=${BUYERS:-1000000}
PRODUCTS=${PRODUCTS:-10000}
STEPS=${STEPS:-10}
RESTART_AT=${RESTART_AT:-"1 $STEPS"}
READS=${READS:-200000}
READ_CONNECTIONS=${READ_CONNECTIONS:-8}
READ_PIPELINE=${READ_PIPELINE:-8}
WIDE_RUNS=${WIDE_RUNS:-3}
SERVER_FLAGS=${SERVER_FLAGS:-}
SETTLE_S=${SETTLE_S:-600}
if [ -z "${CHECKPOINT_RECORDS:-}" ] && [ "$ORDERS" -lt 10000000 ]; then
  CHECKPOINT_RECORDS=$((ORDERS / 10000 > 10 ? ORDERS / 10000 : 10))
fi
if [ -n "${CHECKPOINT_RECORDS:-}" ] && [ "$CHECKPOINT_RECORDS" != default ]; then
  SERVER_FLAGS="--checkpoint-records $CHECKPOINT_RECORDS $SERVER_FLAGS"
fi
SERVER=${SERVER:-target/release/flashsale-server}
BENCH=${BENCH:-target/release/flashsale-bench}
ADMIN=${ADMIN:-target/release/flashsale-admin}
OUT=${OUT:-benches/out}

for bin in "$SERVER" "$BENCH" "$ADMIN"; do
  [ -x "$bin" ] || { echo "$bin is missing: build it first (see the header)" >&2; exit 2; }
done
if ! [ "$STEPS" -ge 1 ] || ! [ "$ORDERS" -ge "$STEPS" ]; then
  echo "want ORDERS >= STEPS >= 1" >&2
  exit 2
fi
mkdir -p "$OUT/raw"
results=$OUT/scale-results.txt
: >"$results"
password="scale-$RANDOM$RANDOM"
export FLASHSALE_ADMIN_PASSWORD=$password
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
empty=$dir.empty
rm -rf "$dir" "$empty"
pid=
trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$empty"' EXIT

note() { echo "# $*" >&2; }
# One machine-readable line: `scale KIND key=value ...`.
emit() { echo "scale $*" | tee -a "$results"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# A field of /proc/$pid/status in kB (VmHWM: peak since start; VmRSS: now).
vm() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
# A field of a JSON object on stdin, by dotted path.
field() {
  python3 -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k, "n/a") if isinstance(v, dict) else "n/a"
print(v)' "$1"
}
stats() { FLASHSALE_PASSWORD=$password "$ADMIN" --addr "$addr" --user admin --json stats; }
# Orders stored and where the journal stands, as key=value pairs.
storage() {
  stats | python3 -c 'import json,sys
s = json.load(sys.stdin); st = s.get("storage", {})
print("orders=%d journal_records=%s journal_bytes=%s journal_seq=%s checkpoint_seq=%s unmaterialised=%s" % (
    s["orders_confirmed"] + s["orders_rejected"], st.get("journal_records", "n/a"),
    st.get("journal_bytes", "n/a"), st.get("journal_seq", "n/a"),
    st.get("checkpoint_seq", "n/a"), st.get("orders_unmaterialised", "n/a")))'
}

# Starts the server on data dir $1 (logs under $2); sets pid and ready_ms,
# the time from starting the process to its "listening on" line.
start_server() {
  local data=$1 log=$2 t0
  : >"$log.out"
  t0=$(now_ms)
  # shellcheck disable=SC2086
  RUST_LOG=warn,flashsale_server::sale::journal=info "$SERVER" --data-dir "$data" \
    --listen "$addr" --demo --pay-rate-per-buyer off --pay-rate-per-connection off \
    --pay-rate-per-partner off --new-buyers-per-partner off \
    --login-rate-per-account off --login-rate-per-peer off $SERVER_FLAGS \
    >"$log.out" 2>"$log.err" &
  pid=$!
  until grep -q "listening on" "$log.out"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log.err" >&2; echo "the server failed to start" >&2; exit 1; }
    sleep 0.01
  done
  ready_ms=$(($(now_ms) - t0))
}
# What the start in log $1 replayed: `checkpoint=.. replayed=.. next_seq=..`.
replayed() {
  grep "journal replayed" "$1.err" | tail -1 | grep -oE '(checkpoint|replayed|next_seq)=[0-9]+' | tr '\n' ' '
}
# SIGTERM and wait; sets stop_ms.
stop_server() {
  local t0
  t0=$(now_ms)
  kill -TERM "$pid"
  wait "$pid" || true
  stop_ms=$(($(now_ms) - t0))
  pid=
}
kill9_server() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
# Waits (up to SETTLE_S) until the order tables hold every published
# journal record, as a server that has run a while after a sale would.
settle() {
  local deadline=$(($(date +%s) + SETTLE_S))
  until stats | python3 -c 'import json,sys
st = json.load(sys.stdin).get("storage", {})
sys.exit(0 if st.get("materialised_seq", 0) >= st.get("journal_seq", 0) else 1)'; do
    [ "$(date +%s)" -lt "$deadline" ] || { note "the tables did not catch up in $SETTLE_S s"; return; }
    sleep 1
  done
}

# Restarts the filled server three times: after a kill -9 right after the
# step (the start replays whatever the journal holds then); after a SIGTERM
# right after that start (a stop does not wait for the order tables: the
# next start replays what they lack); and after a SIGTERM once the tables
# have caught up (settle), as after a server that ran a while.
restarts() {
  local step=$1 orders=$2 kind
  for kind in kill9 term term-settled; do
    case $kind in
      kill9) kill9_server; stop_ms=0 ;;
      term) stop_server ;;
      term-settled) settle; stop_server ;;
    esac
    start_server "$dir" "$OUT/raw/restart-$step-$kind"
    emit "restart step=$step orders=$orders kind=$kind stop_ms=$stop_ms ready_ms=$ready_ms vmrss_kb_after_start=$(vm VmRSS) $(replayed "$OUT/raw/restart-$step-$kind")"
  done
}

# The wide sale of benches/scenarios.sh against a fresh process on data dir
# $1; label $2, run $3.
wide_sale() {
  local data=$1 label=$2 run=$3 json
  json=$OUT/raw/wide-$label-$run.json
  start_server "$data" "$OUT/raw/wide-$label-$run"
  "$BENCH" --addr "$addr" --user admin --password "$password" \
    --products 100 --stock 1000 --requests 200000 --connections 64 --pipeline 16 \
    --seed $((1000 + run)) --json >"$json"
  emit "wide data=$label run=$run ready_ms=$ready_ms $(replayed "$OUT/raw/wide-$label-$run") decisions_per_s=$(field decisions_per_s <"$json") answer_p99_us=$(field answer_p99_us <"$json") invariants_ok=$(field invariants_ok <"$json") vmhwm_kb=$(vm VmHWM)"
  stop_server
}

note "filling $dir: $ORDERS orders, $BUYERS buyers, $PRODUCTS products, in $STEPS steps"
start_server "$dir" "$OUT/raw/fill"
emit "config orders=$ORDERS buyers=$BUYERS products=$PRODUCTS steps=$STEPS reads=$READS read_in_flight=$((READ_CONNECTIONS * READ_PIPELINE)) wide_runs=$WIDE_RUNS server_flags=$(xargs <<<"$SERVER_FLAGS" | tr ' ' ,) nproc=$(nproc)"
step_buyers=$((BUYERS / STEPS > 0 ? BUYERS / STEPS : 1))
step_products=$((PRODUCTS / STEPS > 0 ? PRODUCTS / STEPS : 1))
first_orders=
for step in $(seq "$STEPS"); do
  requests=$((ORDERS / STEPS))
  [ "$step" = "$STEPS" ] && requests=$((ORDERS - (STEPS - 1) * (ORDERS / STEPS)))
  # Twice the mean demand per product and some: no product sells out.
  stock=$((2 * requests / step_products + 100))
  json=$OUT/raw/fill-$step.json
  note "step $step/$STEPS: $requests orders"
  "$BENCH" --addr "$addr" --user admin --password "$password" \
    --buyers "$step_buyers" --products "$step_products" --stock "$stock" \
    --requests "$requests" --connections 64 --pipeline 16 --seed $((100 + step)) --json >"$json"
  where=$(storage)
  orders=$(grep -oE 'orders=[0-9]+' <<<"$where" | cut -d= -f2)
  first_orders=${first_orders:-$orders}
  emit "fill step=$step vmhwm_kb=$(vm VmHWM) vmrss_kb=$(vm VmRSS) decisions_per_s=$(field decisions_per_s <"$json") invariants_ok=$(field invariants_ok <"$json") $where"
  if [ "$step" = "$STEPS" ]; then
    note "GetOrder of $READS orders with ids 1..$first_orders"
    json=$OUT/raw/read.json
    "$BENCH" --addr "$addr" --user admin --password "$password" \
      --read-orders "$READS" --read-ids "1..$first_orders" \
      --connections "$READ_CONNECTIONS" --pipeline "$READ_PIPELINE" --json >"$json" || true
    emit "read orders=$orders ids=1..$first_orders reads=$READS in_flight=$((READ_CONNECTIONS * READ_PIPELINE)) found=$(field found <"$json") errors=$(field errors <"$json") reads_per_s=$(field reads_per_s <"$json") p50_us=$(field read_p50_us <"$json") p99_us=$(field read_p99_us <"$json") p999_us=$(field read_p999_us <"$json") max_us=$(field read_max_us <"$json")"
  fi
  if grep -qw "$step" <<<"$RESTART_AT"; then
    note "restarts after step $step"
    restarts "$step" "$orders"
  fi
done
stop_server
emit "datadir orders=$orders bytes=$(du -sb "$dir" | cut -f1)"
note "wide sale: $WIDE_RUNS runs on an empty data dir and on the filled one, interleaved"
for run in $(seq "$WIDE_RUNS"); do
  rm -rf "$empty"
  wide_sale "$empty" empty "$run"
  wide_sale "$dir" filled "$run"
done
rm -rf "$empty"

python3 - "$results" "$OUT" <<'EOF'
import statistics, sys
results, out = sys.argv[1:3]
rows = []
for line in open(results):
    parts = line.split()
    if len(parts) < 2 or parts[0] != "scale":
        continue
    kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    rows.append((parts[1], kv))
def of(kind):
    return [kv for k, kv in rows if k == kind]
def mb(kb):
    return f"{int(kb) / 1024:.0f} MB"
def orders(n):
    n = int(n)
    return f"{n / 1e6:g} M" if n >= 1_000_000 else f"{n:,}".replace(",", " ")
def num(x, digits=0):
    try:
        return f"{float(x):,.{digits}f}".replace(",", " ")
    except ValueError:
        return x
md = []
md.append("| orders stored | peak RSS since start (VmHWM) | RSS (VmRSS) | journal records | orders not yet in the tables | fill decisions/s |")
md.append("| --- | --- | --- | --- | --- | --- |")
for r in of("fill"):
    md.append(f"| {orders(r['orders'])} | {mb(r['vmhwm_kb'])} | {mb(r['vmrss_kb'])} | {r['journal_records']} | {num(r['unmaterialised'])} | {num(r['decisions_per_s'])} |")
restarted = sorted({r["step"] for r in of("restart")}, key=int)
md.append("")
md.append(f"After each step of one harness run; the server restarted after step(s) {', '.join(restarted) or 'none'} (VmHWM counts from the start of the process).")
md.append("")
md.append("| orders stored | restart after kill -9 (records replayed) | after SIGTERM right after (stop took; replayed) | after SIGTERM once the tables caught up (stop; replayed) | RSS after start |")
md.append("| --- | --- | --- | --- | --- |")
restarts = of("restart")
def secs(ms):
    return f"{int(ms) / 1000:.2f} s"
for step in sorted({r["step"] for r in restarts}, key=int):
    k = {r["kind"]: r for r in restarts if r["step"] == step}
    k9, term, settled = k.get("kill9"), k.get("term"), k.get("term-settled")
    if not (k9 and term and settled):
        continue
    md.append(f"| {orders(k9['orders'])} | **{secs(k9['ready_ms'])}** ({k9.get('replayed', 'n/a')}) | "
              f"**{secs(term['ready_ms'])}** ({secs(term['stop_ms'])}; {term.get('replayed', 'n/a')}) | "
              f"**{secs(settled['ready_ms'])}** ({secs(settled['stop_ms'])}; {settled.get('replayed', 'n/a')}) | "
              f"{mb(settled['vmrss_kb_after_start'])} |")
md.append("")
last = of("fill")[-1]
d = of("datadir")[-1]
md.append("| measure | value |")
md.append("| --- | --- |")
md.append(f"| peak RSS over the fill (largest VmHWM) | {mb(max(int(r['vmhwm_kb']) for r in of('fill')))} |")
md.append(f"| data dir after the fill ({orders(d['orders'])} orders) | {int(d['bytes']) / 1e6:.0f} MB |")
jb = last["journal_bytes"]
md.append(f"| journal after the fill: records (bytes) | {last['journal_records']} ({jb if jb == 'n/a' else num(jb)}) |")
for r in of("read"):
    md.append(f"| GetOrder of ids {r['ids']} ({num(r['reads'])} reads, {r['in_flight']} in flight): p50 / p99 / p99.9 | "
              f"{r['p50_us']} / {r['p99_us']} / {r['p999_us']} µs, {num(r['reads_per_s'])} reads/s, {r['errors']} errors |")
wide = {label: [float(r["decisions_per_s"]) for r in of("wide") if r["data"] == label] for label in ("empty", "filled")}
if wide["empty"] and wide["filled"]:
    e, f = statistics.median(wide["empty"]), statistics.median(wide["filled"])
    ok = all(r["invariants_ok"] == "True" for r in of("wide"))
    md.append(f"| wide sale, empty data dir (median of {len(wide['empty'])}) | {num(e)} decisions/s |")
    md.append(f"| wide sale, filled data dir (median of {len(wide['filled'])}) | {num(f)} decisions/s (**{100 * f / e:.0f} %**) |")
    md.append(f"| wide sale runs (empty; filled) | {', '.join(num(x) for x in wide['empty'])}; {', '.join(num(x) for x in wide['filled'])}; invariants ok: {ok} |")
    line = f"scale wide_ratio empty_median={e:.0f} filled_median={f:.0f} ratio={f / e:.3f}"
    print(line)
    open(results, "a").write(line + "\n")
text = "\n".join(md) + "\n"
open(f"{out}/scale-summary.md", "w").write(text)
print()
print(text)

# The picture: memory and restart time against orders stored (SVG, no dependencies).
fills = of("fill")
xs = [int(r["orders"]) / 1e6 for r in fills]
series_rss = [("peak RSS (VmHWM)", "#c0392b", [int(r["vmhwm_kb"]) / 1024 for r in fills]),
              ("RSS (VmRSS)", "#2980b9", [int(r["vmrss_kb"]) / 1024 for r in fills])]
series_restart = [("after kill -9", "#c0392b", [(int(r["orders"]) / 1e6, int(r["ready_ms"]) / 1000) for r in restarts if r["kind"] == "kill9"]),
                  ("after SIGTERM", "#2980b9", [(int(r["orders"]) / 1e6, int(r["ready_ms"]) / 1000) for r in restarts if r["kind"] == "term"]),
                  ("after SIGTERM, tables caught up", "#27ae60", [(int(r["orders"]) / 1e6, int(r["ready_ms"]) / 1000) for r in restarts if r["kind"] == "term-settled"])]
W, H, M = 460, 300, 55
def ticks(top):
    """Round tick values (steps of 1, 2 or 5 times a power of ten) from 0 past top."""
    raw = top / 4
    step = min(m * 10 ** e for e in range(-6, 12) for m in (1, 2, 5) if m * 10 ** e >= raw)
    return [step * i for i in range(int(top / step) + 2)]
def panel(x0, title, ylabel, series, limit, limit_label):
    allx = [x for _, _, pts in series for x, _ in pts] or [1]
    ally = [y for _, _, pts in series for _, y in pts] or [1]
    xt, yt = ticks(max(allx)), ticks(max(max(ally), limit) * 1.1)
    xmax, ymax = xt[-1], yt[-1]
    sx = lambda x: x0 + M + (W - 1.5 * M) * x / xmax
    sy = lambda y: H - M - (H - 1.9 * M) * y / ymax
    s = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-weight="bold">{title}</text>',
         f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>',
         f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>',
         f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle">orders stored (millions)</text>',
         f'<text x="{x0 + 14}" y="{H / 2}" transform="rotate(-90 {x0 + 14} {H / 2})" text-anchor="middle">{ylabel}</text>']
    for y in yt:
        s.append(f'<text x="{sx(0) - 5}" y="{sy(y) + 4}" text-anchor="end" font-size="11">{y:g}</text>')
        s.append(f'<line x1="{sx(0)}" y1="{sy(y)}" x2="{sx(xmax)}" y2="{sy(y)}" stroke="#ddd"/>')
    for x in xt:
        s.append(f'<text x="{sx(x)}" y="{sy(0) + 15}" text-anchor="middle" font-size="11">{x:g}</text>')
    s.append(f'<line x1="{sx(0)}" y1="{sy(limit)}" x2="{sx(xmax)}" y2="{sy(limit)}" stroke="black" stroke-dasharray="6,4"/>')
    s.append(f'<text x="{sx(xmax)}" y="{sy(limit) - 5}" text-anchor="end" font-size="11">{limit_label}</text>')
    for n, (name, colour, pts) in enumerate(series):
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            s.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            s += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        s.append(f'<text x="{sx(0) + 10}" y="{sy(ymax) + 15 + 15 * n}" fill="{colour}" font-size="12">{name}</text>')
    return s
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif" font-size="13">',
       f'<rect width="{2 * W}" height="{H}" fill="white"/>']
svg += panel(0, "server memory", "MB", [(n, c, list(zip(xs, ys))) for n, c, ys in series_rss], 1024, "target: 1 GiB")
svg += panel(W, "restart to serving", "seconds", series_restart, 2, "target: 2 s")
svg.append("</svg>")
open(f"{out}/scale.svg", "w").write("\n".join(svg) + "\n")
print(f"picture: {out}/scale.svg; lines: {results}; summary: {out}/scale-summary.md")
EOF
