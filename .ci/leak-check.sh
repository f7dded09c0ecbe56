#!/usr/bin/env bash
# LeakSanitizer over a short serve-and-stop: uring-echo built with AddressSanitizer (LSan included)
# serves 50 echo connections in each mode, on each driver, and is stopped with SIGTERM; any leak
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --sanitize=address --scratch-path .build-asan --product uring-echo
BIN="$(swift build --sanitize=address --scratch-path .build-asan --show-bin-path)/uring-echo"
for mode in pooled unpooled; do
    for recv in ring buffer epoll; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        # "epoll": the epoll driver (which has no receive strategy to choose).
        if [ "$recv" = epoll ]; then flags=(--driver epoll); else flags=(--driver uring --recv "$recv"); fi
        "$BIN" --port "$port" --mode "$mode" "${flags[@]}" > /tmp/leak-check.out 2> /tmp/leak-check.err &
        pid=$!
        python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
for i in range(50):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    payload = bytes([i % 256]) * (1000 + i * 100)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got == payload, "echo mismatch"
PY
        kill -TERM "$pid"
        status=0
        wait "$pid" || status=$?
        if [ "$status" -ne 0 ] || grep -q "ERROR: LeakSanitizer\|ERROR: AddressSanitizer" /tmp/leak-check.err; then
            cat /tmp/leak-check.err
            echo "leak check: $mode/$recv FAILED (exit $status)"
            exit 1
        fi
        echo "leak check: $mode/$recv clean"
    done
done
