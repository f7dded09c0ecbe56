#!/usr/bin/env bash
# Who keeps the TIME_WAIT when a proxied client ends first, and what it costs (issue 23, item 15).
#
# Two network namespaces this script makes (and removes): "uetw-a" holds the load, the tcp-proxy
# example (on its loopback) and its upstream-side address 10.77.0.1; "uetw-b" holds the C epoll
# echo at 10.77.0.2:9000, over a veth pair. The upstream is not loopback, so Linux does not reuse a
# TIME_WAIT port for a new connect (net.ipv4.tcp_tw_reuse = 2, the default, is loopback only), as
# on a real network. For each --upstream-ending policy: churn through the proxy (16 workers, one
# 128-byte echo per connection, the client closing first after its echo) for DURATION seconds,
# the connections per second in each fifth of the run, errors, and the TIME_WAIT sockets left in
# each namespace.
#
#   sudo bash Benchmarks/scripts/timewait_bench.sh      # DURATION (default 40) seconds per policy
#
# Needs root (namespaces) and the release builds of tcp-proxy, epoll-echo and uring-echo-bench
# (make bench-build).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-40}
PROXY=Examples/.build/release/tcp-proxy
ECHO=Benchmarks/.build/release/epoll-echo
BENCH=Benchmarks/.build/release/uring-echo-bench
for b in $PROXY $ECHO $BENCH; do [ -x "$b" ] || { echo "missing $b: make bench-build" >&2; exit 1; }; done

cleanup() {
    ip netns pids uetw-a 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns pids uetw-b 2>/dev/null | xargs -r kill 2>/dev/null || true
    sleep 0.5
    ip netns del uetw-a 2>/dev/null || true
    ip netns del uetw-b 2>/dev/null || true
}
trap cleanup EXIT
cleanup

setup() {
    ip netns add uetw-a
    ip netns add uetw-b
    ip link add uetw0 type veth peer name uetw1
    ip link set uetw0 netns uetw-a
    ip link set uetw1 netns uetw-b
    ip -n uetw-a addr add 10.77.0.1/24 dev uetw0
    ip -n uetw-b addr add 10.77.0.2/24 dev uetw1
    for ns in uetw-a uetw-b; do ip -n $ns link set lo up; done
    ip -n uetw-a link set uetw0 up
    ip -n uetw-b link set uetw1 up
}

echo "ephemeral ports: $(ip netns exec uetw-a cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || cat /proc/sys/net/ipv4/ip_local_port_range)"
for ending in half-close reset; do
    cleanup
    setup
    ip netns exec uetw-b ulimit -n 65536 2>/dev/null || true
    ip netns exec uetw-b taskset -c 1 $ECHO --host 10.77.0.2 --port 9000 > /dev/null 2>&1 &
    ip netns exec uetw-a taskset -c 0 $PROXY --listen 127.0.0.1:9100 --upstream 10.77.0.2:9000 \
        --max-connections 1024 --idle-timeout 0 --upstream-ending $ending > /dev/null 2>&1 &
    sleep 1
    slice=$(( DURATION / 5 ))
    rates=""
    errors=0
    for i in 1 2 3 4 5; do
        out=$(ip netns exec uetw-a taskset -c 1 $BENCH --port 9100 --mode churn --workers 16 --messages 1 --size 128 \
            --duration $slice --warmup 0 --json | tail -1)
        rate=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["connections_per_sec"]))' "$out")
        err=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["errors"])' "$out")
        rates="$rates $rate"
        errors=$(( errors + err ))
    done
    tw_a=$(ip netns exec uetw-a ss -tan state time-wait | tail -n +2 | grep -c 10.77.0.2 || true)
    tw_b=$(ip netns exec uetw-b ss -tan state time-wait | tail -n +2 | wc -l)
    echo "upstream-ending $ending: connections/s per ${slice} s:$rates; errors $errors; TIME_WAIT toward the upstream on the proxy's side $tw_a, on the upstream's side $tw_b"
done
