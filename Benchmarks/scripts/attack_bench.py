#!/usr/bin/env python3
"""Clients that never read, against proxies and the metrics endpoint: does anyone else get an answer?

Scenario (issue 23, item 1): 100 clients connect through a proxy to an echo upstream (the C epoll
echo peer), each sends 16 MB with a 4 KiB receive buffer and never reads. Once they are all stuck,
50 victims, one after another, each connect, send a 5-byte ping and wait for its echo: the time
from connect to the echo, and how many answered within 1 s. The proxies: the tcp-proxy example
(pooled, default flags), HAProxy 2.6 and nginx 1.22 (as in proxy_bench.py); BASE_PROXY=PATH adds
another tcp-proxy build (main before the change, say). Then the same attack against uring-echo
with --metrics: scrapes of /metrics beside 100 non-reading echo clients. Last, with
--stall-timeout 5, how many of the attackers the proxy has reset after 8 s.

The proxy is pinned to core 0; attackers, victims and the upstream share core 1. Loopback only;
every phase is bounded in time.

    python3 Benchmarks/scripts/attack_bench.py        # ATTACKERS (100), VICTIMS (50)
"""
import os, select, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import proxy_bench as pb  # noqa: E402

ROOT = pb.ROOT
ATTACKERS = int(os.environ.get("ATTACKERS", "100"))
VICTIMS = int(os.environ.get("VICTIMS", "50"))
URING = os.path.join(ROOT, ".build", "release", "uring-echo")
FLOOD = 16 << 20


def attack(port, count, seconds=6.0):
    """`count` clients that send up to 16 MB each and never read, until every one is stuck (its
    send would block for 1 s) or `seconds` pass. Returns the sockets (kept open) and the bytes sent."""
    chunk = b"x" * 65536
    socks, sent, last = [], {}, {}
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
        sent[s] = 0
        last[s] = time.time()
    deadline = time.time() + seconds
    while time.time() < deadline:
        live = [s for s in socks if sent[s] < FLOOD and time.time() - last[s] < 1.0]
        if not live:
            break
        _, writable, _ = select.select([], live, [], 0.1)
        for s in writable:
            try:
                n = s.send(chunk)
                sent[s] += n
                last[s] = time.time()
            except BlockingIOError:
                pass
            except OSError:
                sent[s] = FLOOD
    return socks, sum(sent.values())


def ping(port, timeout=1.0):
    """Connect, send 5 bytes, wait for them back: seconds taken, or None past `timeout`."""
    started = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            s.settimeout(max(0.001, timeout - (time.time() - started)))
            chunk = s.recv(5 - len(got))
            if not chunk:
                return None
            got += chunk
        s.close()
        return time.time() - started
    except OSError:
        return None


def scrape(port, timeout=1.0):
    started = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            s.settimeout(max(0.001, timeout - (time.time() - started)))
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        return time.time() - started if got.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def summary(times):
    ok = [t for t in times if t is not None]
    if not ok:
        return f"0 of {len(times)} answered within 1 s"
    ok.sort()
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    return (f"{len(ok)} of {len(times)} answered within 1 s; p50 {statistics.median(ok) * 1e3:.2f} ms, "
            f"p99 {p99 * 1e3:.2f} ms, max {ok[-1] * 1e3:.2f} ms")


def reset_count(socks):
    """Attacker sockets the server has closed (TCP_INFO's state is CLOSE: a reset came)."""
    n = 0
    for s in socks:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        if info[0] == 7:  # TCP_CLOSE
            n += 1
    return n


def start(command):
    port = pb.free_port()
    proc = subprocess.Popen(["taskset", "-c", "0"] + command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pb.many_files)
    if not pb.wait_port(port):
        proc.kill()
        raise RuntimeError(f"{command(port)[0]} did not start")
    return proc, port


def main():
    pb.ensure_peers()
    pb.many_files()
    work = tempfile.mkdtemp(prefix="attack-bench-")
    upstream_port = pb.free_port()
    upstream = subprocess.Popen(["taskset", "-c", "1", os.path.join(pb.BIN, "epoll-echo"), "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pb.many_files)
    assert pb.wait_port(upstream_port), "the upstream echo did not start"
    proxies = pb.proxies(work, upstream_port)
    chosen = {k: proxies[k] for k in ("uring proxy pooled", "HAProxy 2.6", "nginx 1.22")}
    if os.environ.get("BASE_PROXY"):
        base = os.environ["BASE_PROXY"]
        chosen["tcp-proxy, BASE_PROXY build"] = lambda port: [
            base, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}", "--threads", "1",
            "--max-connections", "9400", "--idle-timeout", "0"]
    print(f"| target | {ATTACKERS} clients that never read | {VICTIMS} other clients, one after another |")
    print("|---|---:|---|")
    try:
        for name, command in chosen.items():
            proc, port = start(command)
            try:
                socks, sent = attack(port, ATTACKERS)
                times = [ping(port) for _ in range(VICTIMS)]
                print(f"| {name} | {sent / 1e6:.0f} MB sent, then stuck | {summary(times)} |", flush=True)
                for s in socks:
                    s.close()
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        # The metrics endpoint of uring-echo beside non-reading echo clients.
        metrics_port = pb.free_port()
        proc, port = start(lambda p: [URING, "--port", str(p), "--idle-timeout", "0", "--metrics", f"127.0.0.1:{metrics_port}"])
        try:
            socks, sent = attack(port, ATTACKERS)
            times = [scrape(metrics_port) for _ in range(VICTIMS)]
            echoes = [ping(port) for _ in range(VICTIMS)]
            print(f"| uring-echo /metrics | {sent / 1e6:.0f} MB sent to the echo | scrapes: {summary(times)} |")
            print(f"| uring-echo echo | (same) | echoes: {summary(echoes)} |", flush=True)
            for s in socks:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        # The stall timeout closes the attackers, not the others.
        proc, port = start(lambda p: proxies["uring proxy pooled"](p) + ["--stall-timeout", "5"])
        try:
            socks, _ = attack(port, ATTACKERS)
            time.sleep(8)
            times = [ping(port) for _ in range(VICTIMS)]
            print(f"| uring proxy pooled, --stall-timeout 5 | {reset_count(socks)} of {ATTACKERS} reset after 8 s | {summary(times)} |")
            for s in socks:
                s.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    finally:
        upstream.terminate()
        upstream.wait(timeout=15)


if __name__ == "__main__":
    main()
