#!/usr/bin/env bash
# Builds the examples, then starts each one, talks to it over loopback, and stops it with SIGTERM.
# Fails on any wrong answer or unclean exit. Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")"
swift build --product minimal-echo
swift build --product uppercase-lines
swift build --product concurrency-embed
swift build --product chat-server
swift build --product async-echo
swift build --product delayed-lines
swift build --product tcp-proxy
python3 readme-snippets.py   # README.md's Swift blocks, compiled against the library as it is
swift build --product readme-snippets
BIN=.build/debug
# EXAMPLES_LAUNCHER runs every example through a launcher: `make examples-epoll` sets it to
# without-io-uring, so each one serves where io_uring is refused (on epoll, by itself).
RUN="${EXAMPLES_LAUNCHER:-}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listening on $1" >&2
    return 1
}

# exchange PORT INPUT: send INPUT, half-close, print the reply.
exchange() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(sys.argv[2].encode())
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode() + "|")  # the bar keeps trailing newlines through $(...)
PY
}

stop() {
    kill -TERM "$1"
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then echo "process $1 did not stop" >&2; kill -9 "$1"; return 1; fi
    wait "$1"
}

passed=0
failed=0
check() {
    if [ "$2" == "$3" ]; then passed=$((passed + 1)); echo "ok: $1"; else failed=$((failed + 1)); echo "FAIL: $1: got '$2', want '$3'"; fi
}

# stop_check NAME PID: SIGTERM, then check the exit status (a crash or a hang is a failure too).
stop_check() {
    local status=0
    stop "$2" || status=$?
    check "$1" "exit $status" "exit 0"
}

port=$(free_port)
$RUN $BIN/minimal-echo "$port" > /tmp/minimal-echo.out &
pid=$!
wait_port "$port"
check "minimal-echo echoes" "$(exchange "$port" "hello")" "hello|"
stop_check "minimal-echo stops on SIGTERM with exit 0" "$pid"

port=$(free_port)
$RUN $BIN/uppercase-lines "$port" > /tmp/uppercase.out &
pid=$!
wait_port "$port"
check "uppercase-lines upper-cases" "$(exchange "$port" "hello world")" "HELLO WORLD|"
check "uppercase-lines closes after bye" "$(exchange "$port" $'one\nbye\nnot sent')" $'ONE\nBYE\n|'
stop_check "uppercase-lines stops on SIGTERM with exit 0" "$pid"

port=$(free_port)
$RUN $BIN/concurrency-embed "$port" > /tmp/embed.out 2>&1 &
pid=$!
wait_port "$port"
check "concurrency-embed echoes" "$(exchange "$port" "async")" "async|"
stop_check "concurrency-embed stops gracefully on SIGTERM" "$pid"
grep -q "stopped:" /tmp/embed.out && check "concurrency-embed reported its statistics" "yes" "yes"

# chat-server: 20 clients over 2 rings, each line to every other client in order; then a client
# that never reads is cut off while the others keep receiving. The checker prints ok:/FAIL: lines.
port=$(free_port)
$RUN $BIN/chat-server --port "$port" --threads 2 > /tmp/chat-server.out 2> /tmp/chat-server.err &
pid=$!
first=""
for _ in $(seq 1 100); do
    first=$(head -n 1 /tmp/chat-server.out 2> /dev/null || true)
    [ -n "$first" ] && break
    sleep 0.1
done
check "chat-server prints its address first" "$first" "listening on 127.0.0.1:$port"
chat_status=0
chat_out=$(timeout 60 python3 - "$port" <<'PY'
import socket, sys, threading, time

PORT = int(sys.argv[1])
# The big sender: 12 MiB, more than the default 4 MiB output bound plus what kernel socket buffers
# can absorb for the slow client (net.ipv4.tcp_wmem's 4 MiB maximum on the server side).
CLIENTS, LINES, BIG_LINE, BIG_LINES = 20, 300, 2000, 6300
stop = threading.Event()
results = []

def check(name, ok, detail=""):
    results.append(ok)
    print(("ok: " if ok else "FAIL: ") + name + ("" if ok else ": " + detail), flush=True)

def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()

class Reader(threading.Thread):
    """Reads one client's socket until EOF, splitting lines (kept without their newline)."""
    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.lines, self.rest, self.eof = sock, [], b"", False
        self.chat = self.big = self.hellos = 0
        self.syncs = set()
    def run(self):
        while not stop.is_set():
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            *lines, self.rest = (self.rest + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"sync "):
                    self.syncs.add(line)
                elif line == b"hello slow":
                    self.hellos += 1
                elif line.startswith(b"big "):
                    self.big += 1
                elif line.startswith(b"c"):
                    self.chat += 1
            self.lines.extend(lines)
        self.eof = True

def connect(rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", PORT))
    s.settimeout(2)
    return s

def sync(sender, receivers, tag):
    """Until every receiver has seen one of `sender`'s sync lines: all are registered."""
    for attempt in range(20):
        line = b"sync %s %d" % (tag, attempt)
        sender.sendall(line + b"\n")
        if wait_for(lambda: all(line in r.syncs for r in receivers), 0.5):
            return True
    return False

def chat_line(i, n):
    return b"c%d %05d %s" % (i, n, b"x" * (10 + (n * 37 + i * 11) % 90))

socks, readers = [], []
try:
    socks = [connect() for _ in range(CLIENTS)]
    readers = [Reader(s) for s in socks]
    for r in readers:
        r.start()
    check("chat-server: all 20 clients joined", sync(socks[0], readers[1:], b"a"), "sync lines did not reach every client")

    # Everyone talks at once, in batches, interleaved between clients.
    batches = 6
    per = LINES // batches
    start = time.monotonic()
    for b in range(batches):
        for i, s in enumerate(socks):
            s.sendall(b"".join(chat_line(i, n) + b"\n" for n in range(b * per, (b + 1) * per)))
    expected = (CLIENTS - 1) * LINES
    done = wait_for(lambda: all(r.chat >= expected for r in readers), 20)
    check("chat-server: every client got %d lines" % expected, done,
          "counts %s after %.1fs" % ([r.chat for r in readers], time.monotonic() - start))
    bad = []
    for i, r in enumerate(readers):
        got = {}
        for line in r.lines:
            if line.startswith(b"c"):
                got.setdefault(int(line.split(b" ", 1)[0][1:]), []).append(line)
        if i in got:
            bad.append("client %d got %d of its own lines" % (i, len(got[i])))
        for j in range(CLIENTS):
            if j != i and got.get(j, []) != [chat_line(j, n) for n in range(LINES)]:
                bad.append("client %d: lines from client %d missing, altered or out of order (%d lines)" % (i, j, len(got.get(j, []))))
    check("chat-server: each client got exactly the others' lines, in order, none of its own", not bad, "; ".join(bad[:5]))

    # A client that never reads (tiny receive buffer) while client 0 sends 12 MiB.
    slow = connect(rcvbuf=4096)
    slow.sendall(b"hello slow\n")  # forwarded to the others once the slow client is registered
    joined = wait_for(lambda: all(r.hellos > 0 for r in readers), 5)
    check("chat-server: the slow client joined", joined, "its hello did not reach everyone")
    big = [b"big %06d %s" % (n, b"y" * (BIG_LINE - 12)) for n in range(BIG_LINES)]
    start = time.monotonic()
    # Paced at ~12 MiB/s: the server reads a burst far faster than it drains it to each receiver
    # (one send of at most one 4 KiB buffer in flight per connection), so an unpaced 6 MiB burst
    # would put even fast readers over the 4 MiB bound.
    for k in range(0, BIG_LINES, 64):
        socks[0].sendall(b"".join(line + b"\n" for line in big[k:k + 64]))
        time.sleep(0.01)
    done = wait_for(lambda: all(r.big >= BIG_LINES for r in readers[1:]), 15)
    elapsed = time.monotonic() - start
    check("chat-server: the others got all %d big lines despite the slow client" % BIG_LINES, done,
          "counts %s after %.1fs" % ([r.big for r in readers[1:]], elapsed))
    in_order = all([l for l in r.lines if l.startswith(b"big ")] == big for r in readers[1:])
    check("chat-server: big lines intact and in order, none back to the sender", in_order and readers[0].big == 0,
          "sender got %d of its own" % readers[0].big)

    # Now read the slow client: it must end (EOF or reset) before the whole stream arrives.
    stream = b"".join(line + b"\n" for line in big)
    received, ended = bytearray(), False
    slow.settimeout(2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = slow.recv(262144)
        except socket.timeout:
            break
        except OSError:
            ended = True
            break
        if not chunk:
            ended = True
            break
        received += chunk
    check("chat-server: the slow client was disconnected", ended and len(received) < len(stream),
          "ended=%s after %d of %d bytes" % (ended, len(received), len(stream)))
    check("chat-server: what the slow client got is a prefix of the stream", stream.startswith(bytes(received)),
          "its %d bytes differ from the stream" % len(received))
except Exception as error:  # a reset or timeout here means the server failed, not the checker
    check("chat-server: checker ran to the end", False, repr(error))
finally:
    stop.set()
    for s in socks:
        s.close()
sys.exit(0 if all(results) else 1)
PY
) || chat_status=$?
echo "$chat_out"
passed=$((passed + $(grep -c '^ok:' <<< "$chat_out" || true)))
failed=$((failed + $(grep -c '^FAIL:' <<< "$chat_out" || true)))
if [ "$chat_status" -ne 0 ] && ! grep -q '^FAIL:' <<< "$chat_out"; then
    failed=$((failed + 1)); echo "FAIL: chat-server checker exited with status $chat_status"
fi
check "chat-server logged the slow client's abort" "$(grep -c 'over its output bound' /tmp/chat-server.err || true)" "1"
stop_check "chat-server stops on SIGTERM with exit 0" "$pid"

# first_line FILE: waits (bounded) for a program's first stdout line.
first_line() {
    local line=""
    for _ in $(seq 1 100); do
        line=$(head -n 1 "$1" 2> /dev/null || true)
        [ -n "$line" ] && break
        sleep 0.1
    done
    echo "$line"
}

# async-echo: port 0, two rings; the address from its first line; every byte back in order, the rest
# echoed after the client's FIN, then closed; SIGTERM exits 0.
$RUN $BIN/async-echo --port 0 --threads 2 > /tmp/async-echo.out 2> /tmp/async-echo.err &
pid=$!
line=$(first_line /tmp/async-echo.out)
check "async-echo prints its address first" "$(sed -E 's/^listening on 127\.0\.0\.1:[0-9]+$/ok/' <<< "$line")" "ok"
port=${line##*:}
async_out=$(timeout 60 python3 - "$port" <<'PY'
import socket, sys, threading
port = int(sys.argv[1])
def one(i, out):
    data = bytes((i * 7 + k) % 251 for k in range(200_000 + i))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data[:100_000])
    s.sendall(data[100_000:])
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    out[i] = got == data
out = {}
threads = [threading.Thread(target=one, args=(i, out)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print("ok" if all(out.values()) and len(out) == 16 else "FAIL %s" % out)
PY
)
check "async-echo echoes 16 clients byte for byte, then closes after their FIN" "$async_out" "ok"
stop_check "async-echo stops on SIGTERM with exit 0" "$pid"

# async-echo --driver epoll: serves on epoll (its log says so) and echoes; a bad --driver exits 64.
$RUN $BIN/async-echo --port 0 --driver epoll > /tmp/async-echo-epoll.out 2> /tmp/async-echo-epoll.err &
pid=$!
line=$(first_line /tmp/async-echo-epoll.out)
port=${line##*:}
check "async-echo --driver epoll echoes" "$(exchange "$port" "hello epoll")" "hello epoll|"
check "async-echo --driver epoll says so" "$(grep -q 'driver epoll' /tmp/async-echo-epoll.err && echo yes || echo no)" "yes"
stop_check "async-echo --driver epoll stops on SIGTERM with exit 0" "$pid"
status=0
$RUN $BIN/async-echo --port 0 --driver bogus 2> /dev/null || status=$?
check "async-echo --driver bogus exits 64" "$status" "64"

# delayed-lines: 1,000 clients each send one line; every answer within D + 1 s; a connection's
# lines in their order and side by side (three lines take one delay, not three).
$RUN $BIN/delayed-lines --port 0 --threads 2 --delay-ms 300 > /tmp/delayed-lines.out 2> /tmp/delayed-lines.err &
pid=$!
line=$(first_line /tmp/delayed-lines.out)
check "delayed-lines prints its address first" "$(sed -E 's/^listening on 127\.0\.0\.1:[0-9]+$/ok/' <<< "$line")" "ok"
port=${line##*:}
delayed_out=$(timeout 60 python3 - "$port" <<'PY'
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
port, delay = int(sys.argv[1]), 0.3
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(1000)]
start = time.monotonic()
for i, s in enumerate(socks):
    s.sendall(b"line %d\n" % i)
ok = 0
for i, s in enumerate(socks):
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    ok += got == b"line %d\n" % i
elapsed = time.monotonic() - start
s = socks[0]
s.sendall(b"a\nbb\nccc\n")
t = time.monotonic()
got = b""
while got.count(b"\n") < 3:
    got += s.recv(100)
three = time.monotonic() - t
for s in socks:
    s.close()
if ok == 1000 and elapsed <= delay + 1 and got == b"a\nbb\nccc\n" and three < 2 * delay:
    print("ok")
else:
    print("FAIL answered %d, all within %.2f s, three lines %r in %.2f s" % (ok, elapsed, got, three))
PY
)
check "delayed-lines answers 1,000 clients within D + 1 s, a connection's lines in order" "$delayed_out" "ok"
stop_check "delayed-lines stops on SIGTERM with exit 0" "$pid"

# tcp-proxy in front of minimal-echo: port 0, two rings; the address from its first line; 16 clients
# each send 300 KB at once in two writes and half-close: the echo comes back whole, then EOF (the
# client's FIN became the upstream's, whose FIN came back); an upstream that refuses closes the
# client at once; SIGTERM exits 0.
upstream_port=$(free_port)
$RUN $BIN/minimal-echo "$upstream_port" > /tmp/proxy-upstream.out 2>&1 &
upstream_pid=$!
wait_port "$upstream_port"
$RUN $BIN/tcp-proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:"$upstream_port" --threads 2 > /tmp/tcp-proxy.out 2> /tmp/tcp-proxy.err &
pid=$!
line=$(first_line /tmp/tcp-proxy.out)
check "tcp-proxy prints its address first" "$(sed -E 's/^listening on 127\.0\.0\.1:[0-9]+$/ok/' <<< "$line")" "ok"
port=${line##*:}
proxy_out=$(timeout 60 python3 - "$port" <<'PY'
import socket, sys, threading
port = int(sys.argv[1])
def one(i, out):
    data = bytes((i * 13 + k) % 251 for k in range(300_000 + i))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    def send():
        s.sendall(data[:150_000])
        s.sendall(data[150_000:])
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    t.join()
    out[i] = got == data
out = {}
threads = [threading.Thread(target=one, args=(i, out)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print("ok" if len(out) == 16 and all(out.values()) else "FAIL %r" % out)
PY
)
check "tcp-proxy relays 16 clients both ways byte for byte, then passes each FIN on" "$proxy_out" "ok"
stop_check "tcp-proxy stops on SIGTERM with exit 0" "$pid"
stop "$upstream_pid" || true
closed_port=$(free_port)
$RUN $BIN/tcp-proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:"$closed_port" > /tmp/tcp-proxy.out 2> /tmp/tcp-proxy.err &
pid=$!
line=$(first_line /tmp/tcp-proxy.out)
port=${line##*:}
refused_out=$(timeout 10 python3 - "$port" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
t = time.monotonic()
got = s.recv(100)
print("ok" if got == b"" and time.monotonic() - t < 1 else "FAIL %r after %.2f s" % (got, time.monotonic() - t))
PY
)
check "tcp-proxy closes the client at once when the upstream refuses" "$refused_out" "ok"
stop_check "tcp-proxy (upstream refusing) stops on SIGTERM with exit 0" "$pid"

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
