# bench/lib.sh: helpers shared by bench/run.sh and bench/ab.sh (sourced, not run). The
# sourcing script defines `die MESSAGE` (print and exit non-zero) first.

USED_PORTS=" "
# free_port VAR: a TCP and UDP port nobody listens on (and this script has not handed out).
free_port() {
  local listening p _ low
  listening=$(ss -Htuanl 2>/dev/null | awk '{print $5}' | sed 's/.*[:.]//' | tr '\n' ' ')
  # Below the kernel's ephemeral range, so no outgoing connection takes the port between
  # this check and the bind (the smoke run in CI once lost a port that way).
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  ((low > 12000)) || low=32768
  for _ in $(seq 500); do
    p=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
    [[ $USED_PORTS == *" $p "* || " $listening " == *" $p "* ]] && continue
    if ! command -v ss >/dev/null 2>&1 && (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      continue
    fi
    USED_PORTS+="$p "
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

# wait_tcp PORT WHAT WHERE: waits up to 10 s for a listener on 127.0.0.1:PORT; else dies
# naming WHAT and WHERE its output is.
wait_tcp() {
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "$2 did not start listening on 127.0.0.1:$1 (see $3)"
}
