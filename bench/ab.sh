#!/usr/bin/env bash
# bench/ab.sh: quick A/B runs of one load step against two or more builds, alternating,
# each run on a fresh redis-server and a fresh service, so that a change can be told from
# this machine's drift (which moves a full bench/run.sh by up to a third within an hour).
#
# usage: bench/ab.sh [-n ROUNDS] [-d DURATION] [-r 'REDIS ARGS'] STEP BINARY [BINARY...]
#
#   STEP       completed   RecordStream of completed events, closed loop
#              pairs       RecordStream of starts and finishes, closed loop
#              unary       one event per Record, 8 connections x 32 in flight, closed loop
#              open        one event per Record, 10,000 calls/s open loop, 2 s warm-up
#                          (both unary steps start, as in bench/run.sh, once the stream
#                          before them is folded and the AOF rewritten)
#              aof         completed events with AOF rewrites off: AOF bytes per event,
#                          by command (what each event costs Redis' persistence)
#   BINARY     a tasktime binary; each is copied first, so a rebuild during the runs
#              changes nothing. A second build of another commit:
#                git worktree add /tmp/wt <commit> &&
#                  (cd /tmp/wt && CARGO_TARGET_DIR=/tmp/wt-target cargo build --release)
#   -n         rounds (default 3): each round runs every binary once, in the order given
#   -d         load duration per run (default 8s), after a 2 s stream that is not counted
#   -r         extra redis-server arguments, e.g. '--auto-aof-rewrite-percentage 0'
#
# Redis runs as bench/run.sh starts it (AOF, appendfsync everysec, noeviction, no RDB).
# Per run it prints the rate (and the open loop's p50 / p99), CPU µs per event of
# redis-server (all of it, with its AOF-rewrite children; and its main thread alone) and
# of the service, and the AOF rewrites Redis started during the load; then the range of
# each over the rounds, per binary. Nothing it creates outlives it. The services read
# their TASKTIME_* environment as `tasktime serve` does: a setting given there applies
# to every build (a wrapper script that sets it and execs a binary makes it one build's).
set -euo pipefail
exec </dev/null

ROUNDS=3
DUR=8s
REDIS_ARGS=""
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
  exit 2
}
while getopts "n:d:r:h" opt; do
  case $opt in
    n) ROUNDS=$OPTARG ;;
    d) DUR=$OPTARG ;;
    r) REDIS_ARGS=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 2)) || usage
STEP=$1
shift
case $STEP in
  completed | pairs | unary | open | aof) ;;
  *)
    echo "bench/ab.sh: unknown step \`$STEP\`: use completed, pairs, unary, open or aof" >&2
    exit 2
    ;;
esac
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || {
  echo "bench/ab.sh: -n \`$ROUNDS\` is not a positive number of rounds" >&2
  exit 2
}
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench/ab.sh: $tool not found (redis-server and redis-cli: apt-get install -y redis-server)" >&2
    exit 1
  }
done

TMPD=$(mktemp -d /tmp/tasktime-ab.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMPD"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BINS=()
for b in "$@"; do
  [[ -x $b ]] || {
    echo "bench/ab.sh: \`$b\` is not an executable tasktime binary" >&2
    exit 2
  }
  copy="$TMPD/bin${#BINS[@]}"
  cp "$b" "$copy"
  BINS+=("$copy")
done

die() {
  echo "bench/ab.sh: $*" >&2
  # The run's logs go with its directory on exit: show their ends first.
  tail -n 5 "$TMPD"/run/*.log >&2 2>/dev/null || true
  exit 1
}
# free_port and wait_tcp.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }     # with reaped children
main_ticks() { awk '{print $14 + $15}' "/proc/$1/task/$1/stat"; } # Redis' main thread
rewrites() { redis-cli -p "$1" info persistence | tr -d '\r' | awk -F: '$1 == "aof_rewrites" {print $2}'; }

case $STEP in
  completed | aof) LOAD=(--mode stream --workload completed) ;;
  pairs) LOAD=(--mode stream --workload pairs) ;;
  unary) LOAD=(--mode unary --connections 8 --concurrency 32) ;;
  open) LOAD=(--mode unary --rate 10000 --connections 8 --concurrency 64 --warmup 2s) ;;
esac
EXTRA=()
[[ $STEP == aof ]] && EXTRA=(--auto-aof-rewrite-percentage 0)
# shellcheck disable=SC2206 # word splitting of -r is the point
EXTRA+=($REDIS_ARGS)

RESULTS=$TMPD/results
run_one() { # binary-index round
  local bin=${BINS[$1]} dir=$TMPD/run rp sp rpid spid r0 m0 s0 w0 r1 m1 s1 w1 json warm
  rm -rf "$dir" && mkdir -p "$dir"
  free_port rp
  redis-server --port "$rp" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --save '' "${EXTRA[@]}" --logfile "$dir/redis.log" &
  rpid=$!
  PIDS+=("$rpid")
  wait_tcp "$rp" redis-server "the end of its log, below"
  free_port sp
  "$bin" serve --listen "127.0.0.1:$sp" --redis-url "redis://127.0.0.1:$rp" --drain-period 0s \
    --grace-period 5s >"$dir/serve.log" 2>&1 &
  spid=$!
  PIDS+=("$spid")
  wait_tcp "$sp" "tasktime serve" "the end of its log, below"
  warm=$("$bin" bench --server "http://127.0.0.1:$sp" --json --duration 2s --mode stream \
    --workload "$([[ $STEP == pairs ]] && echo pairs || echo completed)")
  if [[ $STEP == unary || $STEP == open ]]; then
    # As bench/run.sh does before its unary steps: the stream's journals folded (a quiet
    # journal is folded within about 1.5 s) and the AOF rewritten, so that neither a fold
    # of the stream nor a rewrite's fork lands in the load.
    sleep 2
    redis-cli -p "$rp" bgrewriteaof >/dev/null
    while redis-cli -p "$rp" info persistence | tr -d '\r' |
      grep -qE '^aof_rewrite_(in_progress|scheduled):1'; do sleep 0.1; done
  fi
  r0=$(ticks "$rpid") m0=$(main_ticks "$rpid") s0=$(ticks "$spid") w0=$(rewrites "$rp")
  json=$("$bin" bench --server "http://127.0.0.1:$sp" --json --duration "$DUR" "${LOAD[@]}")
  r1=$(ticks "$rpid") m1=$(main_ticks "$rpid") s1=$(ticks "$spid") w1=$(rewrites "$rp")
  kill "$spid"
  wait "$spid" 2>/dev/null || true
  python3 - "$1" "$2" "$STEP" "$json" "$(getconf CLK_TCK)" "$r0 $r1 $m0 $m1 $s0 $s1 $((w1 - w0))" "$dir" "$warm" "$RESULTS" <<'PY'
import json, os, sys
b, rnd, step, summary, hz = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
r0, r1, m0, m1, s0, s1, w = map(int, sys.argv[6].split())
n = summary["events_acked"]
# CPU was read around the whole load, its warm-up (open loop) included.
us = lambda a, b: (b - a) * 1e6 / hz / (n + summary.get("warmup_events_acked", 0))
rate = summary["events_per_sec"]
lat = summary["latency_us"]
row = {"bin": int(b), "rate": rate, "redis": us(r0, r1), "main": us(m0, m1), "svc": us(s0, s1), "p50": lat["p50"], "p99": lat["p99"]}
text = f"build {b} round {rnd}: {rate:,.0f}/s"
if step == "open":
    text += f", p50 {lat['p50']:,} µs, p99 {lat['p99']:,} µs"
text += f"; µs per event: Redis {row['redis']:.2f} (main thread {row['main']:.2f}), service {row['svc']:.2f}; AOF rewrites {w}"
if step == "aof":
    # The AOF's increment files: every command Redis logged since it started, by name.
    d = os.path.join(sys.argv[7], "appendonlydir")
    by, total = {}, 0
    for f in sorted(os.listdir(d)):
        if ".incr." not in f:
            continue
        data = open(os.path.join(d, f), "rb").read()
        i = 0
        while i < len(data):
            j = data.index(b"\r\n", i)
            p, name = j + 2, None
            for _ in range(int(data[i + 1 : j])):
                k = data.index(b"\r\n", p)
                length = int(data[p + 1 : k])
                name = name or data[k + 2 : k + 2 + length].decode().upper()
                p = k + 2 + length + 2
            by[name] = by.get(name, 0) + p - i
            total += p - i
            i = p
    # The 2 s stream before the load wrote to the same files: per event of both.
    n_all = n + json.loads(sys.argv[8])["events_acked"]
    row["aof"] = total / n_all
    text += f"; AOF {total / n_all:.1f} bytes per event: " + ", ".join(
        f"{k} {v / n_all:.1f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:6])
print(text)
with open(sys.argv[9], "a") as results:
    results.write(json.dumps(row) + "\n")
PY
  kill "$rpid"
  wait "$rpid" 2>/dev/null || true
}

: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
  for i in "${!BINS[@]}"; do
    # Not in a pipeline: a subshell would keep the processes it starts from the cleanup.
    run_one "$i" "$round"
  done
done
python3 - "$RESULTS" "$STEP" "$@" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
step, names = sys.argv[2], sys.argv[3:]
print(f"\n{step}: range over the rounds, per build")
for b, name in enumerate(names):
    mine = [r for r in rows if r["bin"] == b]
    rng = lambda k, f: f"{f(min(r[k] for r in mine))}-{f(max(r[k] for r in mine))}"
    text = f"  build {b} ({name}): {rng('rate', lambda v: f'{v:,.0f}')}/s"
    if step == "open":
        text += f", p99 {rng('p99', lambda v: f'{v:,}')} µs"
    if step == "aof":
        text += f", AOF {rng('aof', lambda v: f'{v:.1f}')} bytes"
    text += f"; Redis {rng('redis', lambda v: f'{v:.2f}')} (main thread {rng('main', lambda v: f'{v:.2f}')}), service {rng('svc', lambda v: f'{v:.2f}')} µs per event"
    print(text)
PY
