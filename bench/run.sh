#!/usr/bin/env bash
# bench/run.sh: tasktime's benchmark harness. Builds the service, starts its own Redis
# (AOF, appendfsync everysec, noeviction) and its own tasktime processes on free ports,
# measures every step below in this one run, and prints ONE table (also written to
# bench/out/latest.md, with each step's raw output in bench/out/raw/).
#
#   Redis' own ceiling       redis-benchmark HINCRBY, -c 1 -P 64 and -c 50 -P 64
#   exactly-once floor       redis-benchmark HSET of new fields into a hash of millions,
#                            and HMGET of it: the least Redis work per new instance
#   transport ceiling        tasktime bench against `serve --null-store` (stream; unary closed
#                            and open loop)
#   full path                tasktime bench against `serve --redis-url` (stream, batch,
#                            unary closed and open loop, query, gate); the stream steps
#                            again in a steady state (two older record generations)
#   memory                   Redis bytes per series-minute and per open instance,
#                            service RSS with 1,000,000 open instances in 10,000 series
#   peer                     the StatsD daemon (npm `statsd`, discarding backend) fed
#                            the same timers over UDP
#   ratios and bounds        all from the numbers above; a bound is the most this
#                            machine can do with exactly once (cores and Redis' thread
#                            over the null store's CPU and the floor, per event)
#
# Per step it also samples CPU (utime+stime from /proc/<pid>/stat) of the service,
# redis-server and the load client, Redis commands (INFO commandstats) and service RSS.
#
# usage: bench/run.sh            full run, about 4 to 6 minutes on 2 cores
#        bench/run.sh --smoke    every step for about a second, debug build, output in
#                                bench/out/smoke/; checks that each step ran, not speed
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
exec </dev/null

SMOKE=0
case "${1:-}" in
  "") ;;
  --smoke) SMOKE=1 ;;
  -h | --help)
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: bench/run.sh [--smoke]" >&2
    exit 2
    ;;
esac

if ((SMOKE)); then
  DUR=1s               # per load step
  RB_N=20000           # redis-benchmark requests per run
  PRELOAD_ONE=1000     # instances preloaded for the one-series query
  PRELOAD_MANY=3000    # ... for the 600-series query
  PRELOAD_GATE=2000    # ... for the gate
  OPEN_N=20000         # open instances for the memory step
  OPEN_SERIES=1000     # ... spread over this many series
  STEADY_RECORDS=20000 # records in the older generations for the steady-state steps
  OUT=$ROOT/bench/out/smoke
else
  DUR=8s
  RB_N=2000000
  PRELOAD_ONE=20000
  PRELOAD_MANY=60000
  PRELOAD_GATE=20000
  OPEN_N=1000000
  OPEN_SERIES=10000
  STEADY_RECORDS=2000000
  OUT=$ROOT/bench/out
fi
RAW=$OUT/raw
SD_DIR=$ROOT/bench/.statsd
SD_VERSION=0.9.0
SD_FLUSH_MS=1000
HZ=$(getconf CLK_TCK)

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

# ---------------------------------------------------------------- processes and cleanup

PIDS=()
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/tasktime-bench.XXXXXX")

cleanup() {
  local rc=$? pid i
  trap - EXIT
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMPD"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port and wait_tcp.
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- measurements

ticks() { # utime+stime of a process, clock ticks (fields after the `(comm)`)
  local f
  read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat")
  echo $((f[11] + f[12]))
}
# cutime+cstime: the CPU of the children a process has waited for. Redis' children are
# its AOF rewrites (RDB snapshots are off), a cost of the writes that made the AOF grow.
child_ticks() {
  local f
  read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat")
  echo $((f[13] + f[14]))
}
# utime+stime of Redis' main thread alone (its task whose id is the process id): the
# thread that runs every command; its I/O and background threads are not in it.
main_ticks() { ticks "$1/task/$1"; }
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
redis_calls() { rcli info commandstats | awk -F'[:=,]' '/^cmdstat_/{s += $3} END {print s + 0}'; }
used_memory() { rcli info memory | awk -F: '/^used_memory:/{print $2 + 0}'; }
# The number under key $2 of the JSON summary $1 (a key that occurs once in it).
jnum() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" "$1" | head -n 1; }
calc() { awk "BEGIN { OFMT = \"%.4f\"; print ($*) }"; }
# Integer with thousands separators.
fmt() { awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); n = ""; while (length(s) > 3) { n = "," substr(s, length(s) - 2) n; s = substr(s, 1, length(s) - 3) } print s n }'; }
# µs of CPU per unit from clock ticks.
per_unit() { # ticks units
  if [[ -z $1 || -z $2 || $2 == 0 ]]; then echo "–"; else num "$(calc "$1 * 1000000 / $HZ / $2")"; fi
}
# A number to read: separators from 1,000 up, three significant digits below.
num() { awk -v v="$1" 'BEGIN { if (v >= 1000) { s = sprintf("%.0f", v); n = ""; while (length(s) > 3) { n = "," substr(s, length(s) - 2) n; s = substr(s, 1, length(s) - 3) } print s n } else printf(v >= 100 ? "%.0f\n" : (v >= 10 ? "%.1f\n" : "%.2f\n"), v) }'; }

# measure OUTFILE SERVICE_PID CMD...: runs CMD with stdout to OUTFILE and sets M_SVC,
# M_REDIS (CPU ticks of the service and Redis over the run; Redis' include the AOF
# rewrites the run started, M_REDIS_CHILDREN of them), M_CLIENT (CPU ticks of CMD and its
# children, read by the wrapper shell after it waited for them) and M_CALLS.
# The service folds each task's increment journal (`...:j`) into the buckets once it is
# long, 5 s old, or quiet for 0.5 s (it looks every second); memory and queries are
# measured once every journal is folded, and each ingest step's rate includes the time
# the service took to fold what the step left (at most 60 s).
# A flusher that keeps up folds a journal at its first pass (every FOLD_EVERY, 1 s) after
# the journal went quiet (FOLD_QUIET, 0.5 s; src/store/redis.rs): up to 1.5 s after the
# last append. Only folding beyond that is the load outrunning the flusher.
FOLD_SLACK_S=1.5
wait_folded() {
  local i
  for i in $(seq 600); do
    [[ -z $(rcli --scan --pattern '*:j' | head -1) ]] && return 0
    sleep 0.1
  done
  log "journals still not folded after 60 s: $(rcli --scan --pattern '*:j' | wc -l) left"
}

# Waits until no AOF rewrite runs or is scheduled (both from one snapshot: a scheduled
# rewrite starts as the running one ends), at most 120 s.
wait_rewrites() {
  local i
  for i in $(seq 1200); do
    rcli info persistence | tr -d '\r' | grep -qE '^aof_rewrite_(in_progress|scheduled):1' || return 0
    sleep 0.1
  done
  log "an AOF rewrite did not finish in 120 s: its CPU is not counted in the step that started it"
}

# Rewrites of the AOF Redis has started (`aof_rewrites` counts one when it forks) or
# scheduled so far, from one INFO snapshot.
aof_rewrites() {
  rcli info persistence | tr -d '\r' | awk -F: '
    $1 == "aof_rewrites" { n = $2 } $1 == "aof_rewrite_scheduled" { s = $2 }
    END { print n + s }'
}

measure() {
  local out=$1 svc=$2 s0 r0 k0 c0
  shift 2
  # A rewrite an earlier step started ends first: its child's CPU is that step's.
  wait_rewrites
  s0=$(ticks "$svc")
  r0=$(ticks "$REDIS_PID")
  k0=$(child_ticks "$REDIS_PID")
  c0=$(redis_calls)
  # shellcheck disable=SC2016
  local w0 m0 t0
  w0=$(aof_rewrites)
  m0=$(main_ticks "$REDIS_PID")
  t0=$(date +%s.%N)
  bash -c '"$@" >"$0" 2>"$0.stderr"; rc=$?
    read -r -a f < <(sed "s/^.*) //" /proc/$$/stat)
    echo $((f[13] + f[14])) >"$0.cpu"; exit $rc' "$out" "$@" ||
    die "$(basename "$out"): '$*' failed: $(tail -n 5 "$out.stderr")"
  # How busy Redis' one command thread was while the load ran (folding after it not
  # counted): near 1, Redis is what bounds the step.
  M_REDIS_MAIN_BUSY=$(calc "($(main_ticks "$REDIS_PID") - $m0) / $HZ / ($(date +%s.%N) - $t0)")
  # AOF rewrites Redis started while the load ran (each forks Redis).
  M_REWRITES=$(($(aof_rewrites) - w0))
  # The Redis service keeps folding journals after the load stops: wait, and count it.
  M_DRAIN=0
  if [[ $svc == "$SVC_PID" ]]; then
    local d0
    d0=$(date +%s.%N)
    wait_folded
    M_DRAIN=$(calc "$(date +%s.%N) - $d0")
  fi
  # The rewrites this step started: Redis counts their CPU once it has reaped them.
  wait_rewrites
  M_SVC=$(($(ticks "$svc") - s0))
  M_REDIS_CHILDREN=$(($(child_ticks "$REDIS_PID") - k0))
  M_REDIS=$(($(ticks "$REDIS_PID") - r0 + M_REDIS_CHILDREN))
  ((M_REDIS_CHILDREN == 0)) ||
    log "$(basename "$out"): Redis CPU $M_REDIS ticks, $M_REDIS_CHILDREN of them in its AOF-rewrite children"
  M_CALLS=$(($(redis_calls) - c0 - 1)) # minus the INFO that read the first count
  M_CLIENT=$(cat "$out.cpu")
  printf '{"service_cpu_ticks":%s,"redis_cpu_ticks":%s,"redis_rewrite_cpu_ticks":%s,"client_cpu_ticks":%s,"clk_tck":%s,"redis_commands":%s,"redis_main_thread_busy":%s}\n' \
    "$M_SVC" "$M_REDIS" "$M_REDIS_CHILDREN" "$M_CLIENT" "$HZ" "$M_CALLS" "$M_REDIS_MAIN_BUSY" >"${out%.*}.proc.json"
}

# ---------------------------------------------------------------- the table

TABLE=$TMPD/table.md
: >"$TABLE"
declare -A V # numbers the ratios and targets need

# row STEP LOAD RESULT P50 P99 SVC_CPU REDIS_CPU CLIENT_CPU CMDS RSS TARGET
row() {
  printf '| %s |\n' "$(printf '%s|' "$@" | sed 's/|$//; s/|/ | /g')" >>"$TABLE"
  log "$1: $3"
}

# verdict VALUE OP LIMIT TEXT: "TEXT: met" or "TEXT: **not met**".
verdict() {
  if awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { exit !((op == ">=") ? v >= l : v <= l) }'; then
    echo "$4: met"
  else
    echo "$4: **not met**"
  fi
}

# bench_step NAME STEP LOAD SERVICE_PID URL TARGET_KIND BENCH_ARGS...
bench_step() {
  local name=$1 step=$2 load=$3 svc=$4 url=$5 kind=$6 f units result rate p50 p99 rss cmds target=""
  shift 6
  f=$RAW/$name.json
  measure "$f" "$svc" "$BIN" bench --server "$url" --json --duration "$DUR" "$@"
  [[ $(jnum "$f" requests) -gt 0 ]] || die "$name: no request was answered ($(cat "$f"))"
  # Per request, from the summary's latency_us (send_lag_us has the same names).
  p50=$(sed -n 's/.*"latency_us":{"p50":\([0-9]*\).*/\1/p' "$f")
  p99=$(sed -n 's/.*"latency_us":{"p50":[0-9]*,"p99":\([0-9]*\).*/\1/p' "$f")
  units=$(jnum "$f" events_acked)
  # CPU and commands were counted over the warm-up too (`--warmup`): per unit over both.
  local warm
  warm=$(jnum "$f" warmup_events_acked)
  if [[ $units == 0 ]]; then
    units=$(jnum "$f" requests)
    warm=$(jnum "$f" warmup_requests)
    rate=$(jnum "$f" requests_per_sec)
    result="$(fmt "$rate") req/s"
  else
    local unit="events/s" sent
    [[ $(jnum "$f" batch_size) == 1 ]] && unit="calls/s"
    rate=$(jnum "$f" events_per_sec)
    result="$(fmt "$rate") $unit"
    # Sustained: the events over the time to send them and to fold what they left,
    # beyond the FOLD_SLACK_S a flusher that keeps up takes anyway.
    local behind
    behind=$(calc "$M_DRAIN - $FOLD_SLACK_S")
    if [[ $svc == "$SVC_PID" ]] && awk -v d="$behind" 'BEGIN { exit !(d >= 0.1) }'; then
      sent=$rate
      rate=$(calc "$units / ($(jnum "$f" duration_s) + $behind)")
      result="$(fmt "$rate") $unit sustained ($(fmt "$sent") sent; the journals took $(printf '%.1f' "$M_DRAIN") s to fold after the load)"
    fi
  fi
  # Open loop: how late the generator itself issued the requests (their latency counts it).
  local lag
  lag=$(sed -n 's/.*"send_lag_us":{"p50":[0-9]*,"p99":\([0-9]*\).*/\1/p' "$f")
  [[ -n $lag ]] && result="$result; issued p99 $(fmt "$lag") µs late by the generator"
  V[$name]=$rate
  V[$name.p99]=$p99
  rss=$(calc "$(rss_kb "$svc")" / 1024)
  local all=$((units + ${warm:-0}))
  # CPU µs per event, unrounded, for the bounds below.
  V[$name.svc_us]=$(calc "$M_SVC * 1000000 / $HZ / $all")
  V[$name.client_us]=$(calc "$M_CLIENT * 1000000 / $HZ / $all")
  cmds="–"
  [[ $svc == "$SVC_PID" ]] && cmds=$(num "$(calc "$M_CALLS / $all")")
  case $kind in
    pairs) target=$(verdict "$rate" ">=" 300000 "≥ 300,000 (stretch 600,000)") ;;
    completed) target=$(verdict "$rate" ">=" 600000 "≥ 600,000 (stretch 1,200,000)") ;;
    unary) target=$(verdict "$rate" ">=" 25000 "≥ 25,000 calls/s") ;;
    open)
      if awk -v r="$rate" 'BEGIN { exit !(r >= 9500) }'; then
        target=$(verdict "$p99" "<=" 2000 "p99 ≤ 2 ms at 10,000/s")
      else
        target="p99 ≤ 2 ms at 10,000/s: **not met** (only $(fmt "$rate")/s sustained)"
      fi
      ;;
    query1) target=$(verdict "$p99" "<=" 10000 "p99 ≤ 10 ms") ;;
    query600) target=$(verdict "$p99" "<=" 50000 "p99 ≤ 50 ms") ;;
  esac
  local redis_cpu
  redis_cpu=$(per_unit "$M_REDIS" "$all")
  if [[ $svc == "$SVC_PID" ]]; then
    redis_cpu="$redis_cpu (main thread $(printf '%.2f' "$M_REDIS_MAIN_BUSY") busy)"
  else
    redis_cpu="–"
  fi
  row "$step" "$load" "$result" "$(fmt "$p50")" "$(fmt "$p99")" "$(per_unit "$M_SVC" "$all")" \
    "$redis_cpu" "$(per_unit "$M_CLIENT" "$all")" "$cmds" "$(fmt "$rss")" "$target"
}

# ---------------------------------------------------------------- build

mkdir -p "$RAW"
rm -f "$RAW"/*
if ((SMOKE)); then
  log "building (debug: the smoke run checks that every step works, not speed)"
  cargo build --quiet
  cp target/debug/tasktime "$TMPD/tasktime"
else
  log "building (release)"
  cargo build --release --quiet
  cp target/release/tasktime "$TMPD/tasktime"
fi
# A private copy: other builds of the working tree cannot swap the binary mid-run.
BIN=$TMPD/tasktime
for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install -y redis-server"
done

# ---------------------------------------------------------------- Redis and the services

free_port REDIS_PORT
mkdir -p "$TMPD/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMPD/redis" \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save '' \
  --logfile "$RAW/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_tcp "$REDIS_PORT" redis-server "$RAW"
for _ in $(seq 100); do
  [[ $(rcli ping 2>/dev/null) == PONG ]] && break
  sleep 0.05
done
REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
REDIS_SETTINGS="appendonly $(rcli config get appendonly | tail -n 1), appendfsync $(rcli config get appendfsync | tail -n 1), maxmemory-policy $(rcli config get maxmemory-policy | tail -n 1), RDB snapshots off"
log "redis-server $REDIS_VERSION on 127.0.0.1:$REDIS_PORT: $REDIS_SETTINGS"

free_port SVC_PORT
"$BIN" serve --listen "127.0.0.1:$SVC_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --drain-period 0s --grace-period 5s >"$RAW/serve-redis.log" 2>&1 &
SVC_PID=$!
PIDS+=("$SVC_PID")
free_port NULL_PORT
"$BIN" serve --listen "127.0.0.1:$NULL_PORT" --null-store \
  --drain-period 0s --grace-period 5s >"$RAW/serve-null.log" 2>&1 &
NULL_PID=$!
PIDS+=("$NULL_PID")
wait_tcp "$SVC_PORT" "tasktime serve --redis-url" "$RAW"
wait_tcp "$NULL_PORT" "tasktime serve --null-store" "$RAW"
SVC=http://127.0.0.1:$SVC_PORT
NULL=http://127.0.0.1:$NULL_PORT
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The first line of /proc/stat: every CPU's ticks by kind, summed; the 8th number is
# "steal", time the hypervisor ran something else while this VM wanted the CPU.
cpu_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9 }' /proc/stat; }
read -r CPU_ALL0 CPU_STEAL0 < <(cpu_ticks)

# ---------------------------------------------------------------- 1. Redis' own ceiling

rb_step() { # name clients
  local name=$1 c=$2 f rate p50
  f=$RAW/$name.txt
  measure "$f" "$REDIS_PID" redis-benchmark -p "$REDIS_PORT" -c "$c" -P 64 -n "$RB_N" -r 1000 -q \
    HINCRBY 'rb:{bench}:h' 'f:__rand_int__' 1
  rate=$(tr '\r' '\n' <"$f" | grep 'requests per second' | tail -n 1 | sed 's/.*: \([0-9.]*\) requests per second.*/\1/')
  p50=$(tr '\r' '\n' <"$f" | grep 'requests per second' | tail -n 1 | sed -n 's/.*p50=\([0-9.]*\) msec.*/\1/p')
  [[ -n $rate ]] || die "$name: cannot read the rate from $(cat "$f")"
  V[$name]=$rate
  row "redis-benchmark HINCRBY -c $c -P 64" "$(fmt "$RB_N") ops, 1,000 fields" "$(fmt "$rate") ops/s" \
    "$(fmt "$(calc "${p50:-0}" \* 1000)")" "–" "–" "$(per_unit "$M_REDIS" "$RB_N") (main thread $(printf '%.2f' "$M_REDIS_MAIN_BUSY") busy)" "$(per_unit "$M_CLIENT" "$RB_N")" "1" "–" ""
  rcli del 'rb:{bench}:h' >/dev/null
}
rb_step rb-c1 1
rb_step rb-c50 50

# The least work exactly once asks of Redis: every instance has a record, so a new one
# is inserted into a hash of millions of them (and, as the commit script does, looked up
# first: is it a retry?). Measured as the commands' own execution time (INFO
# commandstats usec, which leaves out reading and parsing the command): HSET of new
# random fields into one hash, then HMGET of random fields of it.
cmdstat() { # command -> "calls usec"
  rcli info commandstats | tr -d '\r' | awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c { print $3, $5 }'
}
floor_step() { # name command...
  local name=$1 f before after
  shift
  f=$RAW/$name.txt
  before=$(cmdstat "${1,,}")
  measure "$f" "$REDIS_PID" redis-benchmark -p "$REDIS_PORT" -c 1 -P 64 -n "$RB_N" -r 100000000 -q "$@"
  after=$(cmdstat "${1,,}")
  V[$name]=$(awk -v b="${before:-0 0}" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " "); print (y[2] - x[2]) / (y[1] - x[1]) }')
}
floor_step floor-hset HSET 'rb:{floor}:records' 'id:__rand_int__' D
floor_step floor-hmget HMGET 'rb:{floor}:records' 'id:__rand_int__'
FLOOR_N=$(rcli hlen 'rb:{floor}:records')
rcli unlink 'rb:{floor}:records' >/dev/null
row "exactly-once floor: HSET a new field" "$(fmt "$RB_N") ops into one hash ($(fmt "$FLOOR_N") fields at the end)" \
  "$(num "${V[floor-hset]}") µs of Redis per insert" "–" "–" "–" "–" "–" "1" "–" ""
row "exactly-once floor: HMGET a field" "$(fmt "$RB_N") ops on that hash" \
  "$(num "${V[floor-hmget]}") µs of Redis per lookup" "–" "–" "–" "–" "–" "1" "–" ""

# ---------------------------------------------------------------- 2. transport ceiling

DEF="4 conn × 8 in flight × 1,000 ev"
bench_step null-stream-pairs "null store: stream, pairs" "$DEF" "$NULL_PID" "$NULL" "" \
  --mode stream --workload pairs
bench_step null-stream-completed "null store: stream, completed" "$DEF" "$NULL_PID" "$NULL" "" \
  --mode stream --workload completed
# The unary steps' ceilings: what the gRPC path alone costs per call, and the latency it
# alone gives at 10,000 calls/s on these two cores with the generator beside it.
OPEN_WARMUP=2s
((SMOKE)) && OPEN_WARMUP=0s
bench_step null-unary-closed "null store: unary, closed loop" "8 conn × 32 in flight × 1 ev" "$NULL_PID" "$NULL" "" \
  --mode unary --connections 8 --concurrency 32
bench_step null-unary-open "null store: unary, open loop" \
  "10,000 calls/s, 8 conn, ≤ 64 in flight, after a $OPEN_WARMUP warm-up" "$NULL_PID" "$NULL" "" \
  --mode unary --rate 10000 --connections 8 --concurrency 64 --warmup "$OPEN_WARMUP"

# ---------------------------------------------------------------- 3. full path, ingest

bench_step stream-pairs "Redis: stream, pairs" "$DEF" "$SVC_PID" "$SVC" pairs \
  --mode stream --workload pairs
bench_step stream-completed "Redis: stream, completed" "$DEF" "$SVC_PID" "$SVC" completed \
  --mode stream --workload completed
bench_step batch-pairs "Redis: batch (Record), pairs" "$DEF" "$SVC_PID" "$SVC" "" \
  --mode batch --workload pairs
# The unary steps start from a settled Redis: the stream steps grew the AOF by GBs, and
# the automatic rewrite that growth triggers forks Redis (tens of ms with a few GB in
# memory, all of Redis stopped) and runs a child on the same two cores for seconds (in
# one run the rewrite the batch step left ran through the whole unary closed-loop step:
# 15,517 calls/s there, 21,000-32,000 on a fresh Redis). That is the earlier steps'
# cost: rewrite it now. The rows say whether a rewrite still started during the step.
settle_aof() {
  rcli bgrewriteaof >/dev/null
  wait_rewrites
}
wait_folded
settle_aof
bench_step unary-closed "Redis: unary, closed loop" "8 conn × 32 in flight × 1 ev" "$SVC_PID" "$SVC" unary \
  --mode unary --connections 8 --concurrency 32
CLOSED_REWRITES=$M_REWRITES
wait_folded
settle_aof
FORK_US=$(rcli info stats | tr -d '\r' | sed -n 's/^latest_fork_usec://p')
bench_step unary-open "Redis: unary, open loop" \
  "10,000 calls/s, 8 conn, ≤ 64 in flight, after a $OPEN_WARMUP warm-up" "$SVC_PID" "$SVC" open \
  --mode unary --rate 10000 --connections 8 --concurrency 64 --warmup "$OPEN_WARMUP"
REWRITES=$M_REWRITES
log "unary open loop: AOF rewrites started during the load: $REWRITES (the one before it forked in $FORK_US µs)"

# ---------------------------------------------------------------- 3b. steady state

# The steps above start from an empty Redis: an instance record assumed absent (every
# start and completed event) is looked up only in the current generation's record hash,
# since the older ones do not exist yet. A service that has run for two hours has two
# older generations (the default record TTL is 2 h, a generation 1 h: src/store/redis.rs,
# `Generations`), each a hash of millions of records, and every such lookup goes to all
# of them. Write those two hashes for every bench task as that traffic would have left
# them (done markers, the task mix's Zipf weights, STEADY_RECORDS in all; key schema in
# src/store/keys.rs), then stream both workloads again.
steady_state() {
  local now gen
  now=$(date +%s)
  gen=$((now / 3600))
  STEADY_GEN=$gen
  awk -v n="$STEADY_RECORDS" -v c="$gen" 'BEGIN {
    h = 0; for (i = 0; i < 50; i++) h += 1 / (i + 1)
    for (g = c - 2; g <= c - 1; g++) for (i = 0; i < 50; i++) {
      m = int(n / 2 / (i + 1) / h); key = sprintf("tt:v2:{default|bench-task-%02d}:r:%d", i, g)
      for (j = 0; j < m; j += 1000) {
        k = (m - j < 1000) ? m - j : 1000
        printf "*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n", 2 + 2 * k, length(key), key
        for (x = 0; x < k; x++) { id = sprintf("earlier-%d-%d", g, j + x); printf "$%d\r\n%s\r\n$1\r\nD\r\n", length(id), id }
      }
      # The expiry the service gives a generation: its end plus the record TTL.
      printf "*3\r\n$9\r\nPEXPIREAT\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n", length(key), key, length(sprintf("%d", ((g + 1) * 3600 + 7200) * 1000)), ((g + 1) * 3600 + 7200) * 1000
    }
  }' | rcli --pipe >"$RAW/steady-state-preload.txt" || die "steady state: redis-cli --pipe failed: $(tail -n 3 "$RAW/steady-state-preload.txt")"
  grep -q 'errors: 0' "$RAW/steady-state-preload.txt" || die "steady state: the preload had errors: $(tail -n 3 "$RAW/steady-state-preload.txt")"
}
steady_state
# The service builds a filter of each sealed generation's ids (src/store/sealed.rs) the
# first time a round needs it, once per generation and task; a service in its steady
# state has them. A short stream, not measured, has it build them before the steps.
log "steady state: letting the service build its filters of the sealed generations"
"$BIN" bench --server "$SVC" --json --duration 2s --mode stream --workload completed >"$RAW/steady-state-warmup.json" ||
  die "steady state: the warm-up stream failed"
STEADY="two older generations hold $(fmt "$STEADY_RECORDS") records"
bench_step steady-pairs "Redis: stream, pairs, steady state" "$DEF; $STEADY" "$SVC_PID" "$SVC" pairs \
  --mode stream --workload pairs
bench_step steady-completed "Redis: stream, completed, steady state" "$DEF; $STEADY" "$SVC_PID" "$SVC" completed \
  --mode stream --workload completed
# The steps below measured an empty Redis before: remove what the preload wrote (a
# bigger Redis forks longer for its AOF rewrites, which the query steps would feel).
for g in $((STEADY_GEN - 2)) $((STEADY_GEN - 1)); do
  for i in $(seq 0 49); do
    printf 'UNLINK tt:v2:{default|bench-task-%02d}:r:%d\n' "$i" "$g"
  done
done | rcli >/dev/null

# ---------------------------------------------------------------- 4. memory per series-minute

# Minute buckets the ingest steps above wrote: per (task, series, minute) a string
# `...:<ns>:b:m:<start>:<series>` of `name value` lines (the counters and, per outcome,
# the count (`s`, `f`, `c`), the exact sum (`sum:s`...) and the HDR bins (`s:<bin>`...)),
# and the lines folds appended since, in `...:tail` (absent when there are none).
series_minute() {
  local keys=$TMPD/minute-keys
  wait_folded
  rcli --scan --pattern '*:b:m:*' | grep -v ':tail$' >"$keys" || true
  awk '{print "MEMORY USAGE " $0; print "MEMORY USAGE " $0 ":tail"}' "$keys" | rcli >"$keys.bytes"
  awk '{print "GET " $0; print "GET " $0 ":tail"; print "ECHO @@"}' "$keys" | rcli >"$keys.fields"
  # durations = s + f + c; bins = distinct fields named <outcome>:<bin>, per bucket
  awk '$0 == "@@" { for (f in seen) b++; delete seen; next }
       $1 ~ /^[sfc]$/ { n += $2 }
       $1 ~ /^[sfc]:[0-9]+$/ { seen[$1] = 1 }
       END { printf "%d %d\n", n, b }' "$keys.fields" >"$keys.nb"
  local n b sm
  read -r n b <"$keys.nb"
  sm=$(wc -l <"$keys")
  awk -v n="$n" -v b="$b" -v sm="$sm" '{ bytes += $1 }
    END { if (sm == 0) { print "0 0 0 0"; exit }
          printf "%.0f %d %.1f %.0f\n", bytes / sm, sm, n / sm, b / sm }' "$keys.bytes" >"$RAW/series-minute.txt"
  local per sm ev bins
  read -r per sm ev bins <"$RAW/series-minute.txt"
  V[series_minute]=$per
  row "Redis memory per series-minute" "minute buckets written above: $(fmt "$sm") series-minutes, $ev durations and $bins bins per series-minute on average" \
    "$(fmt "$per") B" "–" "–" "–" "–" "–" "–" "–" ""
}
series_minute

# ---------------------------------------------------------------- 5. queries and gate

# --mode query/gate preloads before it measures; preloading in a run of its own
# (--duration 0s) keeps that ingest out of the query's CPU and latency numbers.
preload() { # name args...
  local name=$1
  shift
  rcli flushall >/dev/null
  "$BIN" bench --server "$SVC" --json --duration 0s "$@" >"$RAW/$name-preload.json"
  wait_folded # folding the preload is ingest work too
}
ONE="--tasks 1 --releases 1 --platforms 1"
MANY="--tasks 1 --releases 200 --platforms 3"
# shellcheck disable=SC2086
preload query-1 --mode query $ONE --preload "$PRELOAD_ONE"
# shellcheck disable=SC2086
bench_step query-1 "Redis: GetTaskStats 30 days, 1 series" "1 conn × 1 in flight; $(fmt "$PRELOAD_ONE") preloaded" \
  "$SVC_PID" "$SVC" query1 --mode query $ONE --preload 0 --connections 1 --concurrency 1
# shellcheck disable=SC2086
preload query-600 --mode query $MANY --preload "$PRELOAD_MANY"
SERIES=$(rcli hlen 'tt:v2:{default|bench-task-00}:series')
# shellcheck disable=SC2086
bench_step query-600 "Redis: GetTaskStats 30 days, $SERIES series" "1 conn × 1 in flight; $(fmt "$PRELOAD_MANY") preloaded" \
  "$SVC_PID" "$SVC" query600 --mode query $MANY --preload 0 --connections 1 --concurrency 1
# The same two queries over a month of data: the preloaded instances finish at random
# times over the last 30 days, so the query reads every day bucket of every series.
# shellcheck disable=SC2086
preload query-1-month --mode query $ONE --preload "$PRELOAD_ONE" --preload-span 30d
# shellcheck disable=SC2086
bench_step query-1-month "Redis: GetTaskStats 30 days, 1 series, data over the month" \
  "1 conn × 1 in flight; $(fmt "$PRELOAD_ONE") preloaded over 30 days" \
  "$SVC_PID" "$SVC" query1 --mode query $ONE --preload 0 --connections 1 --concurrency 1
# shellcheck disable=SC2086
preload query-600-month --mode query $MANY --preload "$PRELOAD_MANY" --preload-span 30d
SERIES=$(rcli hlen 'tt:v2:{default|bench-task-00}:series')
# shellcheck disable=SC2086
bench_step query-600-month "Redis: GetTaskStats 30 days, $SERIES series, data over the month" \
  "1 conn × 1 in flight; $(fmt "$PRELOAD_MANY") preloaded over 30 days" \
  "$SVC_PID" "$SVC" query600 --mode query $MANY --preload 0 --connections 1 --concurrency 1
preload gate --mode gate --preload "$PRELOAD_GATE"
bench_step gate "Redis: EvaluateGate r0 vs r1, p90" "4 conn × 8 in flight; $(fmt "$PRELOAD_GATE") preloaded" \
  "$SVC_PID" "$SVC" "" --mode gate --preload 0

# ---------------------------------------------------------------- 6. open instances

# Starts only, so every instance stays open: OPEN_N of them across OPEN_SERIES series
# (100 tasks of 25 releases × 4 platforms at full size), sent by four `tasktime record`.
open_instances() {
  local tasks=$((OPEN_SERIES / 100)) m0 m1 k f pids
  ((tasks >= 1)) || tasks=1
  rcli flushall >/dev/null
  sleep 0.2
  m0=$(used_memory)
  awk -v n="$OPEN_N" -v s="$((tasks * 100))" -v dir="$TMPD" 'BEGIN {
    for (i = 0; i < n; i++) {
      x = i % s
      printf "{\"task\":\"open-task-%03d\",\"instanceId\":\"open-%d\",\"labels\":{\"release\":\"r%d\",\"platform\":\"p%d\"},\"start\":{}}\n",
        int(x / 100), i, int((x % 100) / 4), x % 4 > (dir "/starts." (i % 4) ".jsonl")
    } }'
  f=$RAW/open-instances.txt
  # shellcheck disable=SC2016
  measure "$f" "$SVC_PID" bash -c 'pids=(); for k in 0 1 2 3; do
      "$0" record --batch-size 5000 --server "$1" "$2/starts.$k.jsonl" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || exit 1; done' "$BIN" "$SVC" "$TMPD"
  rm -f "$TMPD"/starts.*.jsonl
  local accepted
  accepted=$(awk '/^sent/ {s += $4} END {print s + 0}' "$f")
  [[ $accepted == "$OPEN_N" ]] || die "open instances: $accepted of $OPEN_N accepted ($(cat "$f"))"
  wait_folded
  m1=$(used_memory)
  # The instance records alone, without the counters and series index the starts also
  # wrote: the record hashes' MEMORY USAGE (every field counted) ÷ their fields.
  local recs one nrec
  recs=$TMPD/record-hashes
  rcli --scan --pattern '*:r:*' >"$recs"
  nrec=$(awk '{print "HLEN " $0}' "$recs" | rcli | awk '{s += $1} END {print s + 0}')
  one=$(awk '{print "MEMORY USAGE " $0 " SAMPLES 0"}' "$recs" | rcli |
    awk -v n="$nrec" '{s += $1} END {printf "%.0f", n ? s / n : 0}')
  local per rss hwm label
  per=$(calc "($m1 - $m0) / $OPEN_N")
  V[open_instance]=$per
  rss=$(calc "$(rss_kb "$SVC_PID")" / 1024)
  hwm=$(calc "$(hwm_kb "$SVC_PID")" / 1024)
  label="$(fmt "$OPEN_N") starts in $(fmt $((tasks * 100))) series, 4 × record"
  row "Redis memory per open instance" "$label; used_memory +$(fmt "$(calc "($m1 - $m0) / 1048576")") MiB ÷ $(fmt "$OPEN_N"); the instance records alone: $one B ($(fmt "$nrec") records in $(wc -l <"$recs") record hashes, MEMORY USAGE)" \
    "$(printf '%.0f' "$per") B" "–" "–" "$(per_unit "$M_SVC" "$OPEN_N")" "$(per_unit "$M_REDIS" "$OPEN_N")" \
    "$(per_unit "$M_CLIENT" "$OPEN_N")" "$(num "$(calc "$M_CALLS / $OPEN_N")")" \
    "$(fmt "$rss")" "$(verdict "$per" "<=" 200 "≤ 200 B")"
  row "service RSS with $(fmt "$OPEN_N") open instances" "$label; peak (VmHWM) over the whole run $(fmt "$hwm") MB" \
    "$(fmt "$rss") MB" "–" "–" "–" "–" "–" "–" "$(fmt "$rss")" \
    "$(verdict "$rss" "<=" 300 "≤ 300 MB at 1,000,000 open, 10,000 series")$( ((OPEN_N < 1000000)) && echo " (only $(fmt "$OPEN_N") here)")"
}
open_instances

# ---------------------------------------------------------------- 7. the StatsD peer

statsd_install() {
  [[ -f $SD_DIR/node_modules/statsd/stats.js ]] && return 0
  command -v node >/dev/null 2>&1 || return 1
  command -v npm >/dev/null 2>&1 || return 1
  log "installing statsd@$SD_VERSION into bench/.statsd/"
  mkdir -p "$SD_DIR"
  timeout 120 npm install --prefix "$SD_DIR" --no-save --no-audit --no-fund --omit=optional --loglevel=error \
    "statsd@$SD_VERSION" >"$RAW/npm-install.log" 2>&1 || return 1
  [[ -f $SD_DIR/node_modules/statsd/stats.js ]]
}

# statsd_case NAME OFFERED_RATE(0 = max): feeds DUR of timers and waits for them to be flushed.
statsd_case() {
  local name=$1 rate=$2 f t0 t1 s0 s1 processed sent secs prate drop load
  f=$RAW/$name.json
  t0=$(jnum "$SD_DIR/discard.json" timers)
  s0=$(ticks "$SD_PID")
  measure "$f" "$SD_PID" node "$ROOT/bench/statsd-feed.js" 127.0.0.1 "$SD_PORT" "${DUR%s}" "$rate"
  # The last timers are processed at the next flush.
  sleep "$(calc "$SD_FLUSH_MS * 2.5 / 1000")"
  t1=$(jnum "$SD_DIR/discard.json" timers)
  s1=$(ticks "$SD_PID")
  processed=$(calc "$t1 - $t0")
  sent=$(jnum "$f" timers_sent)
  secs=$(jnum "$f" duration_s)
  prate=$(calc "$processed / $secs")
  drop=$(calc "$sent > 0 ? 100 * ($sent - $processed) / $sent : 0")
  V[$name]=$prate
  if [[ $rate == 0 ]]; then load="as fast as the feeder sends"; else load="offered $(fmt "$rate") timers/s"; fi
  row "StatsD $SD_VERSION: timers over UDP" "$load; $(fmt "$sent") sent, $(printf '%.1f' "$drop") % dropped" \
    "$(fmt "$prate") timers/s processed" "–" "–" "$(per_unit $((s1 - s0)) "$processed")" "–" \
    "$(per_unit "$M_CLIENT" "$processed")" "–" "$(fmt "$(calc "$(rss_kb "$SD_PID")" / 1024)")" ""
}

statsd_peer() {
  if ! statsd_install; then
    local why="node/npm not available or \`npm install statsd\` failed (see raw/npm-install.log)"
    ((SMOKE)) || log "WARNING: StatsD not measured: $why"
    row "StatsD: timers over UDP" "not measured: $why" "–" "–" "–" "–" "–" "–" "–" "–" ""
    return 0
  fi
  free_port SD_PORT
  free_port SD_MGMT_PORT
  cat >"$SD_DIR/discard-backend.js" <<'EOF'
'use strict';
// Written by bench/run.sh: a StatsD backend that counts what each flush holds, then
// drops it. StatsD has parsed, aggregated and computed percentiles for it by then.
const fs = require('fs');
exports.init = function (startupTime, config, events) {
  let flushes = 0;
  let timers = 0;
  let metrics = 0;
  const write = () =>
    fs.writeFileSync(config.discardFile, JSON.stringify({ flushes, timers, metrics_received: metrics }));
  events.on('flush', (timestamp, m) => {
    flushes++;
    for (const k in m.timer_counters) timers += m.timer_counters[k];
    metrics += m.counters['statsd.metrics_received'] || 0;
    write();
  });
  write();
  return true;
};
EOF
  cat >"$SD_DIR/config.js" <<EOF
{
  address: "127.0.0.1",
  port: $SD_PORT,
  mgmt_address: "127.0.0.1",
  mgmt_port: $SD_MGMT_PORT,
  flushInterval: $SD_FLUSH_MS,
  percentThreshold: [50, 90, 95, 99],
  backends: ["$SD_DIR/discard-backend.js"],
  discardFile: "$SD_DIR/discard.json"
}
EOF
  rm -f "$SD_DIR/discard.json"
  node "$SD_DIR/node_modules/statsd/stats.js" "$SD_DIR/config.js" >"$RAW/statsd.log" 2>&1 &
  SD_PID=$!
  PIDS+=("$SD_PID")
  wait_tcp "$SD_MGMT_PORT" statsd "$RAW"
  for _ in $(seq 100); do
    [[ -f $SD_DIR/discard.json ]] && break
    sleep 0.05
  done
  # The same rate tasktime sustained for completed events (so the same number of
  # timers in the same time), then the issue's paired target rate, then as fast as the
  # feeder goes. StatsD's sustained rate is the best it processed in any of them.
  statsd_case statsd-offered "$(printf '%.0f' "${V[stream-completed]}")"
  statsd_case statsd-300k 300000
  statsd_case statsd-max 0
  V[statsd]=$(printf '%s\n' "${V[statsd-offered]}" "${V[statsd-300k]}" "${V[statsd-max]}" | sort -g | tail -n 1)
}
statsd_peer

# ---------------------------------------------------------------- 8. ratios

ratio() { # step formula value target
  row "$1" "$2" "$3" "–" "–" "–" "–" "–" "–" "–" "$4"
}
r=$(calc "${V[stream-pairs]} / ${V[rb-c1]}")
ratio "ratio: paired ÷ redis-benchmark c1 P64" "stream pairs events/s ÷ HINCRBY ops/s" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 0.5 "≥ 0.5")"
r=$(calc "${V[stream-pairs]} / ${V[null-stream-pairs]}")
ratio "ratio: full path ÷ null store, pairs" "Redis ÷ null store, stream pairs" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 0.7 "≥ 0.7")"
r=$(calc "${V[stream-completed]} / ${V[null-stream-completed]}")
ratio "ratio: full path ÷ null store, completed" "Redis ÷ null store, stream completed" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 0.7 "≥ 0.7")"
r=$(calc "${V[unary-closed]} / ${V[null-unary-closed]}")
ratio "ratio: full path ÷ null store, unary" "Redis ÷ null store, unary closed loop calls/s" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 0.7 "≥ 0.7")"
if [[ -n ${V[statsd]:-} ]]; then
  r=$(calc "${V[stream-completed]} / ${V[statsd]}")
  ratio "ratio: tasktime ÷ StatsD, completed" "completed events/s (one duration each) ÷ StatsD's best processed timers/s" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 1 "≥ 1")"
  r=$(calc "${V[stream-pairs]} / 2 / ${V[statsd]}")
  ratio "ratio: tasktime ÷ StatsD, pairs" "paired durations/s (events/s ÷ 2) ÷ StatsD's best processed timers/s" "$(printf '%.3f' "$r")" "$(verdict "$r" ">=" 1 "≥ 1")"
else
  ratio "ratio: tasktime ÷ StatsD" "StatsD not measured" "–" ""
fi

# The most this machine can do with exactly once, from the floors above and the null
# store's CPU per event (receiving, decoding and validating, which every event needs),
# all from this run: NPROC cores divided by that CPU per event, or Redis' one thread
# divided by its part, whichever is lower. Redis' part is the least any design needs:
# a completed event's record inserted (Redis 8's `HSETEX ... FNX`, set only if none
# exists, checks and inserts in one pass; `HSET`'s count of new fields alone would not
# do: by then a record it must not replace, an open start's, is overwritten); a start's
# record inserted and its finish's overwritten (counted as a lookup), per two events. No
# work of the service's beyond the null store's is counted, so the real ceiling is lower.
CORES=$(nproc)
bound() { # null-step redis-µs-per-event -> events/s
  calc "(a = $CORES * 1000000 / (${V[$1.svc_us]} + ${V[$1.client_us]} + $2)) < (b = 1000000 / $2) ? a : b"
}
beyond() { # target bound text -> verdict
  if awk -v t="$1" -v b="$2" 'BEGIN { exit !(t > b) }'; then
    echo "$3: beyond this machine (target ÷ bound $(printf '%.2f' "$(calc "$1 / $2")"))"
  else
    echo "$3: within the bound (target ÷ bound $(printf '%.2f' "$(calc "$1 / $2")"))"
  fi
}
B_COMPLETED=$(bound null-stream-completed "${V[floor-hset]}")
B_PAIRS=$(bound null-stream-pairs "$(calc "(${V[floor-hset]} + ${V[floor-hmget]}) / 2")")
SD_COMPLETED="" SD_PAIRS=""
if [[ -n ${V[statsd]:-} ]]; then
  SD_COMPLETED="; $(beyond "${V[statsd]}" "$B_COMPLETED" "≥ StatsD")"
  SD_PAIRS="; $(beyond "$(calc "2 * ${V[statsd]}")" "$B_PAIRS" "≥ StatsD (durations/s)")"
fi
ratio "bound: completed, exactly once" "$CORES cores ÷ (null store service + client CPU + a Redis insert), per event" \
  "$(fmt "$B_COMPLETED") events/s" "$(beyond 600000 "$B_COMPLETED" "≥ 600,000"); $(beyond "$(calc "0.7 * ${V[null-stream-completed]}")" "$B_COMPLETED" "0.7 × null store")$SD_COMPLETED"
ratio "bound: pairs, exactly once" "$CORES cores ÷ (null store service + client CPU + Redis (insert + lookup) ÷ 2), per event" \
  "$(fmt "$B_PAIRS") events/s" "$(beyond 300000 "$B_PAIRS" "≥ 300,000"); $(beyond 600000 "$B_PAIRS" "stretch 600,000"); $(beyond "$(calc "0.7 * ${V[null-stream-pairs]}")" "$B_PAIRS" "0.7 × null store")$SD_PAIRS"

# The unary open loop's latency with no store at all: the generator, gRPC and the
# kernel on these cores at the same rate. A full path cannot answer faster than that.
if [[ -n ${V[null-unary-open.p99]:-} ]]; then
  NULL_OPEN_P99=${V[null-unary-open.p99]}
  if awk -v p="$NULL_OPEN_P99" 'BEGIN { exit !(p > 2000) }'; then
    OPEN_BOUND="p99 ≤ 2 ms at 10,000/s: beyond this machine (the null store's own p99 is $(fmt "$NULL_OPEN_P99") µs)"
  else
    OPEN_BOUND="p99 ≤ 2 ms at 10,000/s: within the bound (the null store's p99 is $(fmt "$NULL_OPEN_P99") µs)"
  fi
  ratio "bound: unary open loop, p99" "the null store's p99 at the same 10,000 calls/s in this run (generator, gRPC and kernel; no store)" \
    "$(fmt "$NULL_OPEN_P99") µs" "$OPEN_BOUND"
fi

read -r CPU_ALL1 CPU_STEAL1 < <(cpu_ticks)
STOLEN=$(printf '%.1f' "$(calc "100 * ($CPU_STEAL1 - $CPU_STEAL0) / ($CPU_ALL1 - $CPU_ALL0 + 1)")")

# ---------------------------------------------------------------- print

{
  echo "# tasktime bench/run.sh$( ((SMOKE)) && echo " --smoke (numbers are not meaningful)")"
  echo
  echo "- date: $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/'); binary: $( ((SMOKE)) && echo 'debug' || echo 'release') build"
  echo "- machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(free -h | awk '/^Mem:/ {print $2}') RAM, kernel $(uname -r); load average before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg); CPU time stolen by the hypervisor during the run: $STOLEN % (/proc/stat: of all the cores' time)"
  echo "- redis-server $REDIS_VERSION on 127.0.0.1:$REDIS_PORT, started by this script: $REDIS_SETTINGS"
  echo "- each load step ${DUR}; \`tasktime bench\` workload: 50 tasks (Zipf 1.0) × 4 releases × 3 platforms, lognormal durations; service, Redis, client and StatsD share the machine"
  echo "- CPU columns: µs of CPU (user + system, /proc/<pid>/stat) per event (per request for queries and gate, per op for redis-benchmark, per timer for StatsD); client = the load generator; redis cmds = INFO commandstats calls per event, commands inside the Lua scripts included; Redis' CPU includes its AOF-rewrite children (cutime + cstime), each counted in the step that started it, which waits for it to end"
  echo "- unary steps: the journals folded and Redis' AOF rewritten just before each (the open loop's rewrite forked Redis for $(fmt "${FORK_US:-0}") µs); the open loop then warms up $OPEN_WARMUP, not counted; AOF rewrites started while they sent: closed loop ${CLOSED_REWRITES:-?}, open loop ${REWRITES:-?}"
  echo
  echo "| step | load | result | p50 µs | p99 µs | service CPU µs | Redis CPU µs | client CPU µs | Redis cmds | service RSS MB | target |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  cat "$TABLE"
} >"$OUT/latest.md"
cat "$OUT/latest.md"
log "written to ${OUT#"$ROOT"/}/latest.md, raw output in ${RAW#"$ROOT"/}/"
