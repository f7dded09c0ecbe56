#!/usr/bin/env python3
"""make soak: SOAK_MINUTES (default 10) of mixed load against uring-echo in each mode — persistent
load, churn (with and without client-socket reuse) and adversarial clients (resets mid-echo,
half-closes, trickling writers, binary garbage) — with one line per minute and a verdict.

Loopback only; every load process and client loop is bounded in time. Not run in CI."""
import os, random, socket, subprocess, sys, threading, time, json

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH = os.path.join(ROOT, "Benchmarks", ".build", "release", "uring-echo-bench")
URING = os.path.join(ROOT, ".build", "release", "uring-echo")
MINUTES = int(os.environ.get("SOAK_MINUTES", "10"))
MODES = os.environ.get("SOAK_MODES", "pooled unpooled").split()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Adversary(threading.Thread):
    """Bad clients in a loop; every byte that comes back is checked against what was sent."""

    def __init__(self, port, stop, seed):
        super().__init__(daemon=True)
        self.port, self.stop, self.rng = port, stop, random.Random(seed)
        self.connections = self.errors = self.mismatches = 0

    def run(self):
        while not self.stop.is_set():
            kind = self.rng.choice(["reset", "halfclose", "trickle", "garbage", "connectclose"])
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                self.errors += 1
                time.sleep(0.05)
                continue
            self.connections += 1
            try:
                if kind == "connectclose":
                    s.close()
                    continue
                if kind == "trickle":
                    payload = bytes(self.rng.randrange(256) for _ in range(20))
                    for b in payload:
                        s.sendall(bytes([b]))
                        if s.recv(1) != bytes([b]):
                            self.mismatches += 1
                        time.sleep(0.01)
                    s.close()
                    continue
                payload = os.urandom(self.rng.randrange(1, 200_000))
                if kind == "garbage":
                    payload = b"\x16\x03\x01\x02\x00" + payload[:5000] + b"GET / HTTP/1.1\r\n\r\n"
                if kind == "reset":
                    cut = self.rng.randrange(len(payload))
                    s.sendall(payload[:cut])
                    got = s.recv(self.rng.randrange(1, 65536)) if cut else b""
                    if got != payload[:len(got)]:
                        self.mismatches += 1
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()
                    continue
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = bytearray()
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                if bytes(got) != payload:
                    self.mismatches += 1
                s.close()
            except OSError:
                self.errors += 1
                s.close()


def bench(port, pid, args, seconds):
    cmd = [BENCH, "--port", str(port), "--server-pid", str(pid), "--duration", str(seconds), "--warmup", "0",
           "--json"] + args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"messages": 0, "connections_completed": 0, "errors": 1, "mismatches": 0}


def soak(mode):
    port = free_port()
    errlog = open(f"/tmp/uring-soak-{mode}.err", "w")
    server = subprocess.Popen([URING, "--port", str(port), "--mode", mode, "--max-connections", "4096"]
                              + os.environ.get("SOAK_FLAGS", "").split(),
                              stdout=errlog, stderr=errlog)
    time.sleep(0.5)
    stop = threading.Event()
    adversaries = [Adversary(port, stop, seed) for seed in range(4)]
    for a in adversaries:
        a.start()
    print(f"soak {mode}: {MINUTES} min on 127.0.0.1:{port}, server pid {server.pid}")
    print(f"{'min':>3} {'connections':>12} {'messages':>12} {'errors':>7} {'mismatch':>8} {'RSS KiB':>9} {'fds':>5}")
    totals = {"connections": 0, "messages": 0, "errors": 0, "mismatches": 0}
    rows = []
    for minute in range(1, MINUTES + 1):
        results = {}
        def run(name, args):
            results[name] = bench(port, server.pid, args, 55)
        threads = [threading.Thread(target=run, args=("persistent", ["--mode", "persistent", "--connections", "100", "--size", "512"])),
                   threading.Thread(target=run, args=("churn", ["--mode", "churn", "--workers", "8"] + (["--reuse"] if minute % 2 else [])))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        if server.poll() is not None:
            print(f"server exited with {server.returncode}; its stderr (/tmp/uring-soak-{mode}.err) ends:")
            print("".join(open(f"/tmp/uring-soak-{mode}.err").readlines()[-15:]))
            break
        adv_conn = sum(a.connections for a in adversaries)
        adv_err = sum(a.errors for a in adversaries)
        adv_mis = sum(a.mismatches for a in adversaries)
        conns = results["persistent"].get("connections", 0) + results["churn"].get("connections_completed", 0) + adv_conn - totals.get("adv_conn", 0)
        totals["adv_conn"] = adv_conn
        msgs = results["persistent"].get("messages", 0) + results["churn"].get("messages", 0)
        errs = results["persistent"].get("errors", 0) + results["churn"].get("errors", 0)
        mis = results["persistent"].get("mismatches", 0) + results["churn"].get("mismatches", 0) + adv_mis - totals.get("adv_mis", 0)
        totals["adv_mis"] = adv_mis
        totals["connections"] += conns
        totals["messages"] += msgs
        totals["errors"] += errs
        totals["mismatches"] += mis
        rss, fds = rss_kib(server.pid), fd_count(server.pid)
        rows.append((rss, fds))
        print(f"{minute:>3} {conns:>12} {msgs:>12} {errs:>7} {mis:>8} {rss:>9} {fds:>5}", flush=True)
    stop.set()
    for a in adversaries:
        a.join(timeout=10)
    adversary_errors = sum(a.errors for a in adversaries)
    server.terminate()
    server.wait(timeout=15)
    later = rows[1:] if len(rows) > 1 else rows
    if not later:
        later = [(0, 0)]
    rss_spread = max(r[0] for r in later) - min(r[0] for r in later)
    fd_spread = max(r[1] for r in later) - min(r[1] for r in later)
    rss_flat = rss_spread <= max(2048, min(r[0] for r in later) // 20)
    fds_flat = fd_spread <= 8
    ok = rss_flat and fds_flat and totals["mismatches"] == 0 and server.returncode == 0 and len(rows) == MINUTES
    print(f"verdict {mode}: {'PASS' if ok else 'FAIL'} — {totals['connections']} connections, {totals['messages']} "
          f"messages, {totals['errors']} load errors, {adversary_errors} adversary errors, {totals['mismatches']} "
          f"mismatches; RSS after minute 1 within {rss_spread} KiB, fds within {fd_spread}; server exit "
          f"{server.returncode}")
    return ok


def main():
    results = [soak(mode) for mode in MODES]
    print("soak:", "PASS" if all(results) else "FAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
