#!/usr/bin/env bash
# Builds the examples, then starts each one, talks to it over loopback, and stops it with SIGTERM.
# Fails on any wrong answer or unclean exit. Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")"
swift build --product minimal-echo
swift build --product uppercase-lines
swift build --product concurrency-embed
BIN=.build/debug

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

port=$(free_port)
$BIN/minimal-echo "$port" > /tmp/minimal-echo.out &
pid=$!
wait_port "$port"
check "minimal-echo echoes" "$(exchange "$port" "hello")" "hello|"
stop "$pid" && check "minimal-echo stops on SIGTERM with exit 0" "0" "0"

port=$(free_port)
$BIN/uppercase-lines "$port" > /tmp/uppercase.out &
pid=$!
wait_port "$port"
check "uppercase-lines upper-cases" "$(exchange "$port" "hello world")" "HELLO WORLD|"
check "uppercase-lines closes after bye" "$(exchange "$port" $'one\nbye\nnot sent')" $'ONE\nBYE\n|'
stop "$pid" && check "uppercase-lines stops on SIGTERM with exit 0" "0" "0"

port=$(free_port)
$BIN/concurrency-embed "$port" > /tmp/embed.out 2>&1 &
pid=$!
wait_port "$port"
check "concurrency-embed echoes" "$(exchange "$port" "async")" "async|"
stop "$pid" && check "concurrency-embed stops gracefully on SIGTERM" "0" "0"
grep -q "stopped:" /tmp/embed.out && check "concurrency-embed reported its statistics" "yes" "yes"

echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
