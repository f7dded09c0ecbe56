#!/usr/bin/env python3
"""Side-by-side comparison of uring-echo binaries (for example main before and after a change)
and the two C peers (epoll, io_uring), in one run: server pinned to core 0, load to core 1, runs
interleaved, medians and ratios of server CPU per message (or per connection in churn) to the best
C peer of each workload (the one with the lower median CPU), which is named beside the ratio.

    python3 Benchmarks/scripts/compare.py NAME=BINARY [NAME=BINARY ...]
    python3 Benchmarks/scripts/compare.py "bundles-off=.build/release/uring-echo --disable recv-bundles" ...

A NAME=... argument may carry extra server flags after the binary (one shell word, split on
spaces). Binaries named uring-echo get the benchmark's flags (pooled, buffer ring, no idle
timeout); any other server (async-echo, nio-async-echo, ...) gets only its extra flags and --port. BENCH_REPEATS (default 3) and BENCH_DURATION (default 3 s) set the length;
BENCH_WORKLOADS (comma-separated substrings of the names below) picks workloads; BENCH_NO_PEERS=1
leaves the C peers out (for on/off comparisons of one binary). The streaming workload also
reports server RSS per connection. Loopback only."""
import os, statistics, subprocess, sys, time, socket, json

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "Benchmarks", ".build", "release")
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "3")
C_PEERS = {"epoll (C)": os.path.join(BIN, "epoll-echo"), "uring (C)": os.path.join(BIN, "uring-c-echo")}
FLAGS = ["--mode", "pooled", "--recv", "ring", "--max-connections", "12000", "--idle-timeout", "0"]
WORKLOADS = [
    ("persistent 1000x128B", ["--mode", "persistent", "--connections", "1000", "--size", "128"], "server_cpu_us_per_msg", "messages_per_sec"),
    ("persistent 50x4KiB", ["--mode", "persistent", "--connections", "50", "--size", "4096"], "server_cpu_us_per_msg", "messages_per_sec"),
    ("pipelined 100x128B d8", ["--mode", "pipelined", "--connections", "100", "--size", "128", "--depth", "8"], "server_cpu_us_per_msg", "messages_per_sec"),
    ("churn 16x1", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128"], "server_cpu_us_per_conn", "connections_per_sec"),
    ("churn 16x1 reuse", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128", "--reuse"], "server_cpu_us_per_conn", "connections_per_sec"),
    ("streaming 10000x128B", ["--mode", "streaming", "--connections", "10000", "--size", "128"], "server_cpu_us_per_msg", "messages_per_sec"),
]
if os.environ.get("BENCH_WORKLOADS"):
    wanted = os.environ["BENCH_WORKLOADS"].split(",")
    WORKLOADS = [w for w in WORKLOADS if any(k in w[0] for k in wanted)]
elif not os.environ.get("BENCH_STREAMING"):
    WORKLOADS = [w for w in WORKLOADS if not w[0].startswith("streaming")]


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def run(cmd, workload):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0"] + cmd + ["--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        load = ["taskset", "-c", "1", os.path.join(BIN, "uring-echo-bench"), "--port", str(port), "--server-pid",
                str(proc.pid), "--duration", DURATION, "--warmup", "1", "--json"] + workload[1]
        out = subprocess.run(load, capture_output=True, text=True, timeout=180)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main():
    servers = {}
    for arg in sys.argv[1:]:
        name, command = arg.split("=", 1)
        path, *extra = command.split()
        servers[name] = [path] + (FLAGS if os.path.basename(path) == "uring-echo" else []) + extra
    peers = {} if os.environ.get("BENCH_NO_PEERS") == "1" else C_PEERS
    for name, path in peers.items():
        servers[name] = [path]
    names = list(servers)
    results = {w[0]: {n: [] for n in names} for w in WORKLOADS}
    for rep in range(REPEATS):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for w in WORKLOADS:
            for n in order:
                r = run(servers[n], w)
                results[w[0]][n].append(r)
                rss = f"  rss/conn {r['rss_per_conn_bytes']:.0f} B" if "rss_per_conn_bytes" in r else ""
                print(f"rep {rep + 1} {w[0]:<22} {n:<14} {r[w[3]]:>10.0f}/s  cpu {r[w[2]]:.2f} us{rss}  errors {r['errors']} mismatches {r['mismatches']}", flush=True)
    print()
    reference = "best C" if peers else f"first ({names[0]})"
    print(f"| workload | server | throughput (median) | p99 µs (median) | server CPU µs (median) | CPU ratio to {reference} | to | RSS/conn (median) |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for w in WORKLOADS:
        cpus = {n: statistics.median(r[w[2]] for r in results[w[0]][n]) for n in names}
        best = min(peers, key=lambda n: cpus[n]) if peers else names[0]
        base = cpus[best]
        for n in names:
            tp = statistics.median(r[w[3]] for r in results[w[0]][n])
            ratio = cpus[n] / base if base else 0.0
            rss = [r["rss_per_conn_bytes"] for r in results[w[0]][n] if "rss_per_conn_bytes" in r]
            rss_text = f"{statistics.median(rss):,.0f} B" if rss else ""
            p99 = statistics.median(r.get("p99_us", 0) for r in results[w[0]][n])
            print(f"| {w[0]} | {n} | {tp:,.0f}/s | {p99:,.0f} | {cpus[n]:.2f} | {ratio:.3f} | {best} | {rss_text} |")


if __name__ == "__main__":
    main()
