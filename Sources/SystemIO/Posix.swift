import CSystemIO
import Glibc

/// The process-level system calls the layers above need — clock, threads, signals, plain writes —
/// in one place, as swift-nio keeps its syscalls in one `enum Posix`: `SocketPool`, `EchoServer`
/// and the executable call these instead of Glibc.
package enum Posix {
    /// `CLOCK_MONOTONIC` in nanoseconds (`clock_gettime(2)`, a vDSO call: no system call).
    @inline(__always)
    package static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Starts a detached POSIX thread named `name` that runs `body` with every asynchronous signal
    /// blocked.
    ///
    /// A ring thread never takes the process's signals: with an asynchronous signal unblocked
    /// there, the kernel could deliver, say, SIGTERM to it (waking it from `io_uring_enter`) while
    /// the application waits for the signal on a signalfd or DispatchSource, and an ignored signal
    /// would be lost.
    /// - Parameters:
    ///   - name: the thread's name (Linux keeps 15 bytes), shown by `top -H`, `perf` and /proc.
    ///   - body: what the thread runs.
    /// - Throws: ``SystemError`` for `pthread_create`.
    package static func startThread(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        final class Box: Sendable {
            let body: @Sendable () -> Void
            let name: String
            init(_ body: @escaping @Sendable () -> Void, _ name: String) {
                self.body = body
                self.name = name
            }
        }
        let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            var blocked = sigset_t()
            sigfillset(&blocked)
            for sig in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS] { sigdelset(&blocked, sig) }
            pthread_sigmask(SIG_BLOCK, &blocked, nil)
            _ = box.name.withCString { csystemio_set_thread_name($0) }
            box.body()
            return nil
        }, box)
        guard result == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: Errno(rawValue: result))
        }
        pthread_detach(thread)
    }

    /// Names the calling thread (`prctl(PR_SET_NAME)`, as top, perf and /proc show it).
    /// - Parameter name: the name (15 bytes kept: the kernel's limit).
    package static func setThreadName(_ name: String) {
        _ = name.withCString { csystemio_set_thread_name($0) }
    }

    /// Sets `signal` to be ignored (`signal(2)` with `SIG_IGN`), so it can be taken from a
    /// signalfd or a DispatchSource instead.
    /// - Parameter signal: the signal number.
    package static func ignore(signal: Int32) {
        Glibc.signal(signal, SIG_IGN)
    }

    /// Writes all of `text` to `fd` (`write(2)`, retrying `EINTR` and short writes); errors are
    /// dropped, as for a log line.
    /// - Parameters:
    ///   - text: the bytes, as UTF-8.
    ///   - fd: the descriptor (1 for stdout, 2 for stderr).
    package static func write(_ text: String, to fd: Int32) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }
}
