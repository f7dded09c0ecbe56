#!/usr/bin/env bash
# Where a proxy's CPU goes: perf record -e cpu-clock -g of one proxy for 3 s under the proxy
# benchmark's 1000 x 128 B load (proxy on core 0; load and the C epoll echo upstream on core 1),
# then its top symbols and a split into user space, io_uring, syscall entry + epoll, and the rest
# (the kernel's TCP and socket work).
#
#   bash Benchmarks/scripts/proxy_profile.sh uring|uring-plain|haproxy|nginx
#
# Needs the release builds of make bench-build (tcp-proxy, epoll-echo, uring-echo-bench) and
# perf (linux-perf). Loopback only; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
which=${1:?uring, uring-plain, haproxy or nginx}
B=Benchmarks/.build/release
work=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"
taskset -c 1 "$B/epoll-echo" --port 19001 >/dev/null 2>&1 & echo_pid=$!
trap 'kill $echo_pid ${proxy_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 0.3
case $which in
uring | uring-plain)
    extra=(); [ "$which" = uring-plain ] && extra=(--disable direct-socket)
    taskset -c 0 Examples/.build/release/tcp-proxy --listen 127.0.0.1:19002 --upstream 127.0.0.1:19001 --threads 1 \
        --max-connections 9400 --idle-timeout 0 "${extra[@]}" >/dev/null 2>&1 & proxy_pid=$! ;;
haproxy)
    printf 'global\n    nbthread 1\n    maxconn 9500\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\nfrontend front\n    bind 127.0.0.1:19002\n    default_backend back\nbackend back\n    server upstream 127.0.0.1:19001\n' > "$work/h.cfg"
    taskset -c 0 haproxy -db -f "$work/h.cfg" >/dev/null 2>&1 & proxy_pid=$! ;;
nginx)
    printf 'load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\nmaster_process off;\ndaemon off;\npid %s/n.pid;\nerror_log %s/n.err warn;\nevents { worker_connections 19000; }\nstream { server { listen 127.0.0.1:19002; proxy_pass 127.0.0.1:19001; proxy_half_close on; proxy_timeout 120s; } }\n' "$work" "$work" > "$work/n.conf"
    taskset -c 0 nginx -p "$work" -c "$work/n.conf" >/dev/null 2>&1 & proxy_pid=$! ;;
*) echo "unknown proxy: $which" >&2; exit 64 ;;
esac
sleep 0.5
taskset -c 1 "$B/uring-echo-bench" --port 19002 --server-pid "$proxy_pid" --duration 6 --warmup 1 --json \
    --mode persistent --connections 1000 --size 128 > "$work/load.json" &
load_pid=$!
sleep 2
perf record -e cpu-clock -g -p "$proxy_pid" -o "$work/perf.data" -- sleep 3 >/dev/null 2>&1
wait $load_pid
python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print('%s: %.0f msg/s, %.2f us proxy CPU per message' % (sys.argv[2], d['messages_per_sec'], d['server_cpu_us_per_msg']))" "$work/load.json" "$which"
perf report -i "$work/perf.data" --no-children --sort symbol -g none 2>/dev/null | grep '%' | grep -v '^#' > "$work/symbols.txt"
head -15 "$work/symbols.txt"
python3 - "$work/symbols.txt" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(\S+)", line)
    if m: rows.append((float(m.group(1)), m.group(2), m.group(3)))
syscall = {"sock_poll", "tcp_poll", "fdget", "__fdget", "do_syscall_64", "__sys_recvfrom", "__sys_sendto",
           "syscall_exit_to_user_mode", "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe", "x64_sys_call",
           "__x64_sys_recvfrom", "__x64_sys_sendto", "__x64_sys_epoll_wait", "syscall_return_via_sysret", "fput"}
user = sum(p for p, kind, _ in rows if kind == ".")
uring = sum(p for p, kind, s in rows if kind == "k" and (s.startswith(("io_", "__io_")) or "io_uring" in s or s == "sock_from_file"))
sys_ep = sum(p for p, kind, s in rows if kind == "k" and (s in syscall or s.startswith("ep_") or "epoll" in s))
total = sum(p for p, _, _ in rows)
print(f"user space {user:.1f} %, io_uring {uring:.1f} %, syscall entry + epoll {sys_ep:.1f} %, "
      f"the rest (TCP, sockets, softirq) {total - user - uring - sys_ep:.1f} %")
PY
