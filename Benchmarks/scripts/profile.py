#!/usr/bin/env python3
"""Where the server's time goes, pooled against unpooled: for each workload, a perf profile
(`perf record -e cpu-clock`, kernel and user) and callgrind instruction counts of the server's own
code (user space only) per message or per connection.

    python3 Benchmarks/scripts/profile.py [perf|callgrind|both]

Server on core 0, load on core 1, loopback only, every run bounded in time. Writes a summary to
stdout; raw reports go to /tmp/uring-profile/. PROFILE_WORKLOADS picks workloads by substring."""
import json, os, re, shutil, signal, socket, subprocess, sys, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "Benchmarks", ".build", "release")
URING = os.environ.get("PROFILE_BINARY", os.path.join(ROOT, ".build", "release", "uring-echo"))
OUT = "/tmp/uring-profile"
MODES = {m: ["--mode", m] for m in os.environ.get("PROFILE_MODES", "pooled,unpooled").split(",")}
COMMON = ["--recv", "ring", "--max-connections", "12000", "--idle-timeout", "0"] + os.environ.get("PROFILE_FLAGS", "").split()
WORKLOADS = [
    ("persistent 1000x128B", ["--mode", "persistent", "--connections", "1000", "--size", "128"], "messages"),
    ("persistent 50x4KiB", ["--mode", "persistent", "--connections", "50", "--size", "4096"], "messages"),
    ("pipelined 100x128B d8", ["--mode", "pipelined", "--connections", "100", "--size", "128", "--depth", "8"], "messages"),
    ("churn 16x1", ["--mode", "churn", "--workers", "16", "--messages", "1", "--size", "128"], "connections"),
]
if os.environ.get("PROFILE_WORKLOADS"):
    WORKLOADS = [w for w in WORKLOADS if any(k in w[0] for k in os.environ["PROFILE_WORKLOADS"].split(","))]


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); return True
        except OSError:
            time.sleep(0.2)
    return False


def load(port, pid, args, duration, warmup="1"):
    cmd = ["taskset", "-c", "1", os.path.join(BIN, "uring-echo-bench"), "--port", str(port), "--server-pid", str(pid),
           "--duration", str(duration), "--warmup", warmup, "--json"] + args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def count(result, unit):
    return result["messages"] if unit == "messages" else result["connections_completed"]


def perf_one(mode, workload):
    name, args, unit = workload
    port = free_port()
    server = subprocess.Popen(["taskset", "-c", "0", URING, "--port", str(port)] + MODES[mode] + COMMON,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        data = f"{OUT}/perf-{mode}-{name.replace(' ', '_')}.data"
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-o", data, "-p", str(server.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = load(port, server.pid, args, 5)
        rec.send_signal(signal.SIGINT); rec.wait(timeout=60)
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none",
                              "--percent-limit", "1.5"], capture_output=True, text=True, timeout=300).stdout
        kernel = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
                                capture_output=True, text=True, timeout=300).stdout
        return r, rep, kernel
    finally:
        server.terminate(); server.wait(timeout=15)


def callgrind_one(mode, workload):
    name, args, unit = workload
    port = free_port()
    # valgrind 3.19 cannot read the DWARF 5 the Swift toolchain emits: profile a copy without it
    # (function names come from the symbol table).
    binary = f"{OUT}/uring-echo-nodebug"
    subprocess.run(["objcopy", "--strip-debug", URING, binary], check=True)
    outfile = f"{OUT}/callgrind-{mode}-{name.replace(' ', '_')}.out"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={outfile}",
                               binary, "--port", str(port)] + MODES[mode] + COMMON,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port, 120):
            raise RuntimeError("server under valgrind did not start")
        load(port, server.pid, args, 3, warmup="0")  # warm: pools, pages, code paths
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], capture_output=True, timeout=60)
        r = load(port, server.pid, args, 10, warmup="0")
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], capture_output=True, timeout=60)
        # Dumped now rather than at exit: a stop under valgrind sometimes never ends here (the
        # ring blocked in io_uring_enter while valgrind's own lock waits; seen with builds before
        # and after the same change), and the counts are what matter.
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], capture_output=True, timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill(); server.wait(timeout=60)
    prefix = os.path.basename(outfile) + "."
    dumps = sorted((f for f in os.listdir(OUT) if f.startswith(prefix) and f[len(prefix):].split("-")[0].isdigit()),
                   key=lambda f: int(f[len(prefix):].split("-")[0]))
    source = os.path.join(OUT, dumps[-1]) if dumps else outfile
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", source], capture_output=True, text=True, timeout=300).stdout
    if os.environ.get("PROFILE_KEEP"):
        shutil.copy(source, outfile.replace(".out", ".kept"))
    for f in dumps: os.remove(os.path.join(OUT, f))
    m = re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", ann) or re.search(r"([\d,]+)\s+PROGRAM TOTALS", ann)
    total = int(m.group(1).replace(",", "")) if m else 0
    return r, total, ann


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "both"
    os.makedirs(OUT, exist_ok=True)
    for w in WORKLOADS:
        for mode in MODES:
            if what in ("perf", "both"):
                r, rep, kernel = perf_one(mode, w)
                print(f"## perf {w[0]} {mode}: {r['connections_per_sec'] if w[2] == 'connections' else r['messages_per_sec']:.0f}/s", flush=True)
                print("\n".join(l for l in kernel.splitlines() if l.strip() and not l.startswith("#"))[:800])
                print("\n".join(l for l in rep.splitlines() if l.strip() and not l.startswith("#"))[:3000])
            if what in ("callgrind", "both"):
                r, total, ann = callgrind_one(mode, w)
                n = count(r, w[2])
                per = total / n if n else 0
                print(f"## callgrind {w[0]} {mode}: {total:,} Ir over {n:,.0f} {w[2]} = {per:,.0f} Ir per {w[2][:-1]}", flush=True)
                lines = [l for l in ann.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
                print("\n".join(lines[:14]))
            print(flush=True)


if __name__ == "__main__":
    main()
