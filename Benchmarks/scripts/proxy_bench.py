#!/usr/bin/env python3
"""The proxy benchmark: uring-echo-bench -> proxy -> the C epoll echo peer, for the tcp-proxy
example (pooled with sockets made into slots, pooled with plain sockets, unpooled), HAProxy 2.6
(mode tcp, nbthread 1) and nginx 1.22's stream module (worker_processes 1, proxy_half_close on),
installed from Debian's packages when missing.

The proxy is pinned to core 0; the load generator and the upstream echo share core 1. The figure
to compare is the proxy's CPU per relayed message (utime+stime of the proxy process over the
measured window, divided by the messages echoed end to end: each message crosses the proxy twice),
per connection in churn, and its RSS growth per proxied pair with 9,000 pairs held open (10,000 would
need more descriptors than this machine's hard limit of 20,000 allows HAProxy and nginx).

    python3 Benchmarks/scripts/proxy_bench.py          # BENCH_REPEATS (3), BENCH_DURATION (3 s); BENCH_QUICK=1

Writes the table to stdout and between the proxy markers of docs/benchmarks.md. Loopback only;
every run is bounded in time."""
import json, os, resource, shutil, socket, statistics, subprocess, sys, tempfile, time, datetime, platform

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "Benchmarks", ".build", "release")
PROXY = os.path.join(ROOT, "Examples", ".build", "release", "tcp-proxy")
QUICK = os.environ.get("BENCH_QUICK") == "1"
REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "3"))
DURATION = os.environ.get("BENCH_DURATION", "1.5" if QUICK else "3")
WARMUP = "0.5" if QUICK else "1"
WORKLOADS = [
    ("persistent 1000x128B", ["--mode", "persistent", "--connections", "1000", "--size", "128"], "messages_per_sec", "server_cpu_us_per_msg"),
    ("persistent 50x4KiB", ["--mode", "persistent", "--connections", "50", "--size", "4096"], "messages_per_sec", "server_cpu_us_per_msg"),
    ("churn 16x1", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128"], "connections_per_sec", "server_cpu_us_per_conn"),
    # 9,000 pairs, not 10,000: HAProxy and nginx hold two descriptors per pair, and this machine's hard
    # limit is 20,000 descriptors per process (no CAP_SYS_RESOURCE to raise it). The pooled uring
    # proxy holds none: its sockets live in registered-file slots.
    ("idle 9000", ["--mode", "idle", "--connections", "9000", "--size", "64"], "rss_per_conn_bytes", None),
]
if os.environ.get("BENCH_WORKLOADS"):
    WORKLOADS = [w for w in WORKLOADS if any(k in w[0] for k in os.environ["BENCH_WORKLOADS"].split(","))]


def ensure_peers():
    missing = [p for p, b in (("haproxy", "haproxy"), ("nginx", "nginx")) if not shutil.which(b)]
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        missing.append("libnginx-mod-stream")
    if missing:
        print(f"installing {' '.join(missing)} from Debian's packages", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "haproxy", "nginx", "libnginx-mod-stream"],
                       check=True, env=env)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return True
        except OSError:
            time.sleep(0.05)
    return False


def many_files():
    """The soft descriptor limit raised to the hard one (HAProxy and nginx need two per pair)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proxies(workdir, upstream):
    """Each proxy: a function of the listen port giving its command."""
    def uring(*extra):
        return lambda port: [PROXY, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream}",
                             "--threads", "1", "--max-connections", "9400", "--idle-timeout", "0"] + list(extra)

    def haproxy(port):
        cfg = os.path.join(workdir, f"haproxy-{port}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 9500
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend front
    bind 127.0.0.1:{port}
    default_backend back
backend back
    server upstream 127.0.0.1:{upstream}
""")
        return ["haproxy", "-db", "-f", cfg]

    def nginx(port):
        cfg = os.path.join(workdir, f"nginx-{port}.conf")
        with open(cfg, "w") as f:
            f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
master_process off;
daemon off;
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.err warn;
events {{ worker_connections 19000; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{upstream};
        proxy_half_close on;
        proxy_timeout 120s;
    }}
}}
""")
        return ["nginx", "-p", workdir, "-c", cfg]

    return {
        "uring proxy pooled": uring(),
        "uring proxy pooled, plain sockets": uring("--disable", "direct-socket"),
        "uring proxy unpooled": uring("--mode", "unpooled"),
        "HAProxy 2.6": haproxy,
        "nginx 1.22": nginx,
    }


def run(command, workload):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0"] + command(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=many_files)
    try:
        if not wait_port(port):
            raise RuntimeError(f"{command(port)[0]} did not start: {proc.stderr.read().decode()[:400]}")
        time.sleep(0.3)
        load = ["taskset", "-c", "1", os.path.join(BIN, "uring-echo-bench"), "--port", str(port), "--server-pid",
                str(proc.pid), "--duration", DURATION, "--warmup", WARMUP, "--json"] + workload[1]
        out = subprocess.run(load, capture_output=True, text=True, timeout=300, preexec_fn=many_files)
        if out.returncode != 0:
            raise RuntimeError(f"load failed: {out.stdout[-400:]} {out.stderr[-400:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()


def main():
    ensure_peers()
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="proxy-bench-")
    upstream = free_port()
    echo = subprocess.Popen(["taskset", "-c", "1", os.path.join(BIN, "epoll-echo"), "--port", str(upstream)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=many_files)
    try:
        if not wait_port(upstream):
            raise RuntimeError("the epoll echo upstream did not start")
        servers = proxies(workdir, upstream)
        names = list(servers)
        results = {w[0]: {n: [] for n in names} for w in WORKLOADS}
        for rep in range(REPEATS):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for w in WORKLOADS:
                for n in order:
                    r = run(servers[n], w)
                    results[w[0]][n].append(r)
                    cpu = f"cpu {r[w[3]]:.2f} us" if w[3] else f"rss/conn {r['rss_per_conn_bytes']:.0f} B"
                    print(f"rep {rep + 1} {w[0]:<22} {n:<34} {r[w[2]]:>10.0f}  {cpu}  errors {r['errors']} mismatches {r['mismatches']}",
                          flush=True)
    finally:
        echo.terminate(); echo.wait(timeout=15)
    lines = [f"Measured {datetime.date.today().isoformat()} on Linux {platform.release()}, {os.cpu_count()} cores: the "
             f"proxy on core 0, the load generator and the C epoll echo upstream on core 1; medians of {REPEATS} "
             f"interleaved run(s) of {DURATION} s after {WARMUP} s warm-up (`python3 Benchmarks/scripts/proxy_bench.py`, "
             f"{round(time.time() - started)} s).", "",
             "| workload | proxy | result | proxy CPU | vs HAProxy | vs nginx | p99 µs | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, _, metric, cpu_key in WORKLOADS:
        med = {n: {k: statistics.median(r[k] for r in results[name][n]) for k in (metric, "p99_us")} for n in names}
        for n in names:
            cpu = statistics.median(r[cpu_key] for r in results[name][n]) if cpu_key else None
            med[n]["cpu"] = cpu
        for n in names:
            value = med[n][metric]
            if metric == "messages_per_sec":
                result, cpu_text = f"{value:,.0f} msg/s", f"{med[n]['cpu']:.2f} µs/msg"
            elif metric == "connections_per_sec":
                result, cpu_text = f"{value:,.0f} conn/s", f"{med[n]['cpu']:.1f} µs/conn"
            else:
                result, cpu_text = f"{value:,.0f} B/pair", "–"
            basis = (lambda p: med[p]["cpu"]) if cpu_key else (lambda p: med[p][metric])
            ha = basis("HAProxy 2.6")
            ng = basis("nginx 1.22")
            mine = basis(n)
            vs_ha = f"{mine / ha:.2f}×" if ha else "–"
            vs_ng = f"{mine / ng:.2f}×" if ng else "–"
            errors = sum(r["errors"] + r["mismatches"] for r in results[name][n])
            lines.append(f"| {name} | {n} | {result} | {cpu_text} | {vs_ha} | {vs_ng} | {med[n]['p99_us']:.0f} | {errors} |")
    table = "\n".join(lines)
    print()
    print(table)
    md = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(md).read()
    begin, end = "<!-- proxy:begin -->", "<!-- proxy:end -->"
    if begin in text and end in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end):]
        open(md, "w").write(text)
        print("\nwrote the proxy table into docs/benchmarks.md")
    with open(os.path.join(ROOT, "docs", "proxy-benchmarks.json"), "w") as f:
        json.dump({"results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
