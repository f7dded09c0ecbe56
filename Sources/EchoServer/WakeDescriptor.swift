import URing

/// A ring's wake-up eventfd, as every thread that may signal it sees it: a signal and the close
/// take the same lock, so a handle, a task's job or a stop that signals just as the server closes
/// the descriptor never writes into a number the process has reused for another file.
final class WakeDescriptor: Sendable {
    /// The descriptor: read by the ring (its pending read), signalled through ``signal()``.
    let fd: Int32
    private let open = PthreadLock(true)

    init(_ fd: Int32) { self.fd = fd }

    /// Adds 1 to the eventfd, unless it has been closed.
    func signal() {
        open.withLock { isOpen in
            if isOpen { try? Sockets.signalEventFD(fd) }
        }
    }

    /// Closes the eventfd: once, after its ring has ended.
    func close() {
        open.withLock { isOpen in
            guard isOpen else { return }
            isOpen = false
            _ = try? Sockets.close(fd)
        }
    }
}
