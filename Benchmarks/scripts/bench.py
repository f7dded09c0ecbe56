#!/usr/bin/env python3
"""make bench: every server under every workload, pinned (server core 0, load core 1), repeated
and interleaved so drift hits all alike; medians and ratios to the best peer; results written to
docs/benchmarks.json, docs/benchmarks.svg and the table block of docs/benchmarks.md.

BENCH_QUICK=1 runs one short repetition. BENCH_SERVERS and BENCH_WORKLOADS (comma-separated names)
run a subset and print its table without writing docs/. Loopback only; every run is bounded in time."""
import json, os, platform, socket, statistics, subprocess, sys, time, datetime

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "Benchmarks", ".build", "release")
URING = os.path.join(ROOT, ".build", "release", "uring-echo")
QUICK = os.environ.get("BENCH_QUICK") == "1"
REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "3"))
DURATION = "1.5" if QUICK else "5"
WARMUP = "0.5" if QUICK else "1"
SERVER_CORE, LOAD_CORE = "0", "1"

SERVERS = {
    "uring pooled": [URING, "--mode", "pooled", "--recv", "ring", "--max-connections", "12000", "--idle-timeout", "0"],
    "uring unpooled": [URING, "--mode", "unpooled", "--recv", "ring", "--max-connections", "12000", "--idle-timeout", "0"],
    # The same server on its epoll driver (what runs where io_uring is refused).
    "uring-echo on epoll": [URING, "--driver", "epoll", "--mode", "pooled", "--max-connections", "12000",
                            "--idle-timeout", "0"],
    "nio (1 thread)": [os.path.join(BIN, "nio-echo"), "--threads", "1"],
    "uring async": [os.path.join(ROOT, "Examples", ".build", "release", "async-echo"), "--threads", "1"],
    "nio async (1 thread)": [os.path.join(BIN, "nio-async-echo"), "--threads", "1"],
    "epoll (C)": [os.path.join(BIN, "epoll-echo")],
    "uring (C)": [os.path.join(BIN, "uring-c-echo")],
}
PEERS = ["nio (1 thread)", "epoll (C)", "uring (C)"]
# The async servers (the async-echo example, and SwiftNIO's NIOAsyncChannel echo) run the workloads
# their comparison needs: many connections, pipelined, churn. They are not peers for "vs best peer".
ASYNC = {"uring async", "nio async (1 thread)"}
ASYNC_WORKLOADS = {"persistent 1000x128B", "pipelined 100x128B d8", "churn 16x1"}
WORKLOADS = [
    ("persistent 50x128B", ["--mode", "persistent", "--connections", "50", "--size", "128"], "messages_per_sec"),
    ("persistent 1000x128B", ["--mode", "persistent", "--connections", "1000", "--size", "128"], "messages_per_sec"),
    ("persistent 50x4KiB", ["--mode", "persistent", "--connections", "50", "--size", "4096"], "messages_per_sec"),
    ("pipelined 100x128B d8", ["--mode", "pipelined", "--connections", "100", "--size", "128", "--depth", "8"],
     "messages_per_sec"),
    ("streaming 10000x128B", ["--mode", "streaming", "--connections", "10000", "--size", "128"], "messages_per_sec"),
    ("churn 16x1", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128"], "connections_per_sec"),
    ("churn 16x1 reuse", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128", "--reuse"],
     "connections_per_sec"),
    ("idle 10000", ["--mode", "idle", "--connections", "10000", "--size", "64"], "rss_per_conn_bytes"),
]
SUBSET = bool(os.environ.get("BENCH_SERVERS") or os.environ.get("BENCH_WORKLOADS"))
if os.environ.get("BENCH_SERVERS"):
    SERVERS = {k: v for k, v in SERVERS.items() if k in os.environ["BENCH_SERVERS"].split(",")}
    PEERS = [p for p in PEERS if p in SERVERS] or list(SERVERS)[:1]
if os.environ.get("BENCH_WORKLOADS"):
    WORKLOADS = [w for w in WORKLOADS if w[0] in os.environ["BENCH_WORKLOADS"].split(",")]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def run_one(server, workload):
    name, args, _ = workload
    port = free_port()
    cmd = ["taskset", "-c", SERVER_CORE] + SERVERS[server] + ["--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_listening(port, proc):
            raise RuntimeError(f"{server} did not start: {proc.stderr.read().decode()[:500]}")
        time.sleep(0.3)  # let the probe connection's close settle
        load = ["taskset", "-c", LOAD_CORE, os.path.join(BIN, "uring-echo-bench"), "--port", str(port),
                "--server-pid", str(proc.pid), "--duration", DURATION, "--warmup", WARMUP, "--json",
                "--label", server] + args
        out = subprocess.run(load, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"load failed for {server}/{name}: {out.stdout} {out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def runs_of(workload):
    """The servers that run `workload`, in table order."""
    return [s for s in SERVERS if s not in ASYNC or workload in ASYNC_WORKLOADS]


def median_of(runs, key):
    values = [r[key] for r in runs]
    return statistics.median(values) if values else 0.0


def main():
    started = time.time()
    results = {w[0]: {s: [] for s in runs_of(w[0])} for w in WORKLOADS}
    order = list(SERVERS)
    for rep in range(REPEATS):
        rotated = order[rep % len(order):] + order[:rep % len(order)]  # interleave: rotate who goes first
        for workload in WORKLOADS:
            for server in rotated:
                if server not in results[workload[0]]:
                    continue
                r = run_one(server, workload)
                results[workload[0]][server].append(r)
                print(f"  rep {rep + 1}/{REPEATS} {workload[0]:<22} {server:<16} "
                      f"{r[workload[2]]:>12.1f} {workload[2]}  p99 {r['p99_us']:.0f} us  "
                      f"cpu/msg {r['server_cpu_us_per_msg']:.2f} us  errors {r['errors']} mismatches {r['mismatches']}",
                      flush=True)
    summary = []
    for name, _, metric in WORKLOADS:
        rows = []
        for server in results[name]:
            runs = results[name][server]
            rows.append({
                "server": server, "metric": metric, "value": median_of(runs, metric),
                "p50_us": median_of(runs, "p50_us"), "p99_us": median_of(runs, "p99_us"),
                "cpu_us_per_msg": median_of(runs, "server_cpu_us_per_msg"),
                "cpu_us_per_conn": median_of(runs, "server_cpu_us_per_conn"),
                "rss_per_conn_bytes": median_of(runs, "rss_per_conn_bytes"),
                "server_rss_kib": median_of(runs, "server_rss_kib"),
                "rss_baseline_bytes": median_of(runs, "rss_baseline_bytes"),
                "time_wait_server": median_of(runs, "time_wait_server"),
                "time_wait_client": median_of(runs, "time_wait_client"),
                "errors": sum(r["errors"] for r in runs), "mismatches": sum(r["mismatches"] for r in runs),
                "runs": len(runs),
            })
        lower_is_better = metric == "rss_per_conn_bytes"
        peer_values = [r["value"] for r in rows if r["server"] in PEERS]
        best_peer = min(peer_values) if lower_is_better else max(peer_values)
        for r in rows:
            r["ratio_to_best_peer"] = (r["value"] / best_peer) if best_peer else 0.0
        summary.append({"workload": name, "metric": metric, "rows": rows})
    meta = {
        "date": datetime.date.today().isoformat(), "quick": QUICK, "repeats": REPEATS,
        "duration_s": float(DURATION), "warmup_s": float(WARMUP), "kernel": platform.release(),
        "cpus": os.cpu_count(), "server_core": SERVER_CORE, "load_core": LOAD_CORE,
        "elapsed_s": round(time.time() - started, 1),
    }
    table = render_table(summary, meta)
    print()
    print(table)
    if SUBSET:
        return 0
    docs = os.path.join(ROOT, "docs")
    with open(os.path.join(docs, "benchmarks.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": results}, f, indent=1)
    with open(os.path.join(docs, "benchmarks.svg"), "w") as f:
        f.write(render_svg(summary, meta))
    md = os.path.join(docs, "benchmarks.md")
    if os.path.exists(md):
        text = open(md).read()
        begin, end = "<!-- table:begin -->", "<!-- table:end -->"
        if begin in text and end in text:
            text = text[:text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end):]
            open(md, "w").write(text)
    print(f"\nwrote docs/benchmarks.json, docs/benchmarks.svg, docs/benchmarks.md table ({meta['elapsed_s']} s)")


def render_table(summary, meta):
    lines = [f"Measured {meta['date']} on Linux {meta['kernel']}, {meta['cpus']} cores; server on core "
             f"{meta['server_core']}, load on core {meta['load_core']}; median of {meta['repeats']} interleaved "
             f"run(s) of {meta['duration_s']} s after {meta['warmup_s']} s warm-up"
             f"{' (BENCH_QUICK)' if meta['quick'] else ''}.", "",
             "| workload | server | result | vs best peer | p50 µs | p99 µs | server CPU | server RSS | "
             "TIME_WAIT (server/client) | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in summary:
        for r in w["rows"]:
            metric = w["metric"]
            if metric == "messages_per_sec":
                result, cpu = f"{r['value']:,.0f} msg/s", f"{r['cpu_us_per_msg']:.2f} µs/msg"
            elif metric == "connections_per_sec":
                result, cpu = f"{r['value']:,.0f} conn/s", f"{r['cpu_us_per_conn']:.1f} µs/conn"
            else:
                result, cpu = f"{r['value']:,.0f} B/conn", "–"
            p50 = f"{r['p50_us']:.0f}" if metric != "rss_per_conn_bytes" else "–"
            p99 = f"{r['p99_us']:.0f}" if metric != "rss_per_conn_bytes" else "–"
            # RSS beside throughput where a workload holds many connections open (streaming); idle's
            # result is already bytes per connection.
            rss = (f"{r.get('server_rss_kib', 0) / 1024:,.1f} MiB, {r.get('rss_per_conn_bytes', 0):,.0f} B/conn"
                   if w["workload"].startswith("streaming") else "–")
            tw = f"{r['time_wait_server']:.0f}/{r['time_wait_client']:.0f}"
            lines.append(f"| {w['workload']} | {r['server']} | {result} | {r['ratio_to_best_peer']:.2f}× | {p50} | "
                         f"{p99} | {cpu} | {rss} | {tw} | {r['errors']}/{r['mismatches']} |")
    return "\n".join(lines)


def render_svg(summary, meta):
    colors = {"uring pooled": "#1f6feb", "uring unpooled": "#6ea8fe", "nio (1 thread)": "#f0883e", "epoll (C)": "#8b949e",
              "uring (C)": "#3fb950", "uring async": "#8957e5", "nio async (1 thread)": "#d29922",
              "uring-echo on epoll": "#a371f7"}
    servers = list(SERVERS)
    width, bar, gap, group_gap, left, top, height = 980, 34, 6, 40, 70, 60, 300
    n = len(summary)
    group_w = len(servers) * (bar + gap)
    width = left + n * (group_w + group_gap) + 20
    max_ratio = max(max(r["ratio_to_best_peer"] for r in w["rows"]) for w in summary)
    scale_max = max(1.5, round(max_ratio + 0.25, 1))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 110}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">uring-echo vs peers: result relative to the '
           f'best peer (1.0 = best of nio/epoll/uring C)</text>',
           f'<text x="{left}" y="40" fill="#555">{meta["date"]}, Linux {meta["kernel"]}, {meta["cpus"]} cores, '
           f'median of {meta["repeats"]} run(s); higher is better except idle (bytes per connection)</text>']
    for i in range(int(scale_max * 4) + 1):
        v = i * 0.25
        y = top + height - v / scale_max * height
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="{"#999" if v == 1 else "#eee"}"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{v:.2f}</text>')
    for gi, w in enumerate(summary):
        x0 = left + 10 + gi * (group_w + group_gap)
        for si, r in enumerate(w["rows"]):
            h = r["ratio_to_best_peer"] / scale_max * height
            x = x0 + si * (bar + gap)
            out.append(f'<rect x="{x}" y="{top + height - h:.1f}" width="{bar}" height="{h:.1f}" '
                       f'fill="{colors[r["server"]]}"><title>{r["server"]}: {r["value"]:.1f} ({r["ratio_to_best_peer"]:.2f}x)</title></rect>')
            out.append(f'<text x="{x + bar / 2}" y="{top + height - h - 4:.1f}" text-anchor="middle" font-size="10">'
                       f'{r["ratio_to_best_peer"]:.2f}</text>')
        out.append(f'<text x="{x0 + group_w / 2}" y="{top + height + 18}" text-anchor="middle">{w["workload"]}</text>')
    ly = top + height + 50
    for si, s in enumerate(servers):
        lx = left + si * 170
        out.append(f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="{colors[s]}"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 12}">{s}</text>')
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
