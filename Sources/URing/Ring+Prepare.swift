import CURing
import Glibc

/// `IOSQE_*` flags for one submission entry.
public struct SubmissionOptions: OptionSet, Sendable, Hashable {
    /// The raw `IOSQE_*` bits.
    public let rawValue: UInt8
    /// Wraps raw `IOSQE_*` bits.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `IOSQE_IO_DRAIN`: start only after everything before it completed.
    public static let drain = SubmissionOptions(rawValue: 1 << 1)
    /// `IOSQE_IO_LINK`: the next entry starts only after this one succeeds.
    public static let link = SubmissionOptions(rawValue: 1 << 2)
    /// `IOSQE_IO_HARDLINK`: like ``link``, but the chain continues after a failure.
    public static let hardLink = SubmissionOptions(rawValue: 1 << 3)
    /// `IOSQE_ASYNC`: go straight to a worker thread.
    public static let async = SubmissionOptions(rawValue: 1 << 4)
    /// `IOSQE_CQE_SKIP_SUCCESS`: post no completion unless the request fails.
    public static let skipSuccess = SubmissionOptions(rawValue: 1 << 6)
}

// Computed, so that inlined callers fold them (a global `let` is read through its lazy addressor).
@inlinable var fixedFileFlag: UInt8 { 1 << 0 }  // IOSQE_FIXED_FILE
@inlinable var acceptMultishotFlag: UInt16 { 1 << 0 }  // IORING_ACCEPT_MULTISHOT
@inlinable var recvMultishotFlag: UInt16 { 1 << 1 }  // IORING_RECV_MULTISHOT
@inlinable var cancelAll: Int32 { 1 << 0 }  // IORING_ASYNC_CANCEL_ALL
@inlinable var cancelFixedFD: UInt32 { 1 << 3 }  // IORING_ASYNC_CANCEL_FD_FIXED
@inlinable var fileIndexAlloc: UInt32 { ~0 }  // IORING_FILE_INDEX_ALLOC

// Typed preparation of every request the project uses. Each method takes a free SQE (submitting
// first when the queue is full), fills it through liburing's `io_uring_prep_*`, and sets
// `user_data` to `tag`. Nothing is submitted until `submit*` is called.
extension Ring {
    /// Takes a free SQE, submitting what is queued when the submission queue is full.
    @inlinable
    func nextSQE() throws(URingError) -> UnsafeMutablePointer<io_uring_sqe> {
        var sqe = io_uring_get_sqe(ring)
        var tries = 0
        while sqe == nil {
            counters.pointee.submitsForFullQueue &+= 1
            // A full SQ mid-batch: submit what is prepared. EAGAIN (no memory for requests now) and
            // EBUSY (completions backed up) pass: the harvest has already taken this batch's CQEs
            // off the ring, so the kernel can post, and a few tries get through.
            do {
                try submit()
            } catch where (error.errno == .wouldBlock || error.errno == .busy) && tries < 64 {
                counters.pointee.submitRetries &+= 1
            }
            tries += 1
            sqe = io_uring_get_sqe(ring)
            if sqe == nil && tries >= 64 { throw URingError("io_uring_get_sqe", errno: .busy) }
        }
        return sqe.unsafelyUnwrapped
    }

    @inlinable
    func finish(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ tag: UInt64, _ options: SubmissionOptions, fixed: Bool) {
        io_uring_sqe_set_data64(sqe, tag)
        let flags = options.rawValue | (fixed ? fixedFileFlag : 0)
        if flags != 0 { curing_sqe_add_flags(sqe, flags) }
    }

    @inlinable
    func scratchSlot(_ sqe: UnsafeMutablePointer<io_uring_sqe>) -> UnsafeMutablePointer<SubmissionScratch> {
        scratch + Int(curing_sqe_index(ring, sqe))
    }

    /// Prepares a no-op (`IORING_OP_NOP`): completes with result 0.
    /// - Parameters:
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareNop(tag: UInt64, options: SubmissionOptions = []) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_nop(sqe)
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares an accept on `listener` (`IORING_OP_ACCEPT`).
    ///
    /// The result is the new fd (``AcceptTarget/descriptor``), 0 (``AcceptTarget/slot(_:)``) or
    /// the slot the kernel chose (``AcceptTarget/anySlot``). A multishot accept (Linux 5.19) posts
    /// one completion per connection while ``Completion/hasMore`` is set.
    /// - Parameters:
    ///   - listener: the listening socket.
    ///   - target: where the accepted socket goes.
    ///   - multishot: keep accepting with one request (`IORING_ACCEPT_MULTISHOT`).
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` with `EINVAL` for a multishot accept into a chosen slot (the kernel
    ///   can only choose the slot itself then), or if no SQE could be had.
    @inlinable
    public func prepareAccept(
        _ listener: FileRef, into target: AcceptTarget = .descriptor, multishot: Bool = false,
        tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        if multishot, case .slot = target { throw URingError("accept", errno: .invalidArgument) }
        let sqe = try nextSQE()
        // A direct accept with SOCK_CLOEXEC fails with EINVAL: a slot has no close-on-exec bit.
        let flags: Int32 = target == .descriptor ? Int32(SOCK_CLOEXEC.rawValue) : 0
        io_uring_prep_accept(sqe, listener.raw, nil, nil, flags)
        if multishot { curing_sqe_add_ioprio(sqe, acceptMultishotFlag) }
        switch target {
        case .descriptor: break
        case .slot(let index): curing_sqe_set_file_index(sqe, index)
        case .anySlot: curing_sqe_set_file_index(sqe, fileIndexAlloc)
        }
        finish(sqe, tag, options, fixed: listener.isFixed)
    }

    /// Prepares a connect (`IORING_OP_CONNECT`). The address is copied into the ring's own memory,
    /// so it need not outlive this call. Connecting to `SocketAddress.unspecified` dissolves the
    /// socket's association (an abortive disconnect), after which it can connect again.
    /// - Parameters:
    ///   - socket: the socket to connect.
    ///   - address: the peer.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareConnect(
        _ socket: FileRef, to address: SocketAddress, tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        let slot = scratchSlot(sqe)
        slot.pointee.address = address.storage
        let length = address.length
        withUnsafeMutablePointer(to: &slot.pointee.address) { storage in
            storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                io_uring_prep_connect(sqe, socket.raw, sa, length)
            }
        }
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares the creation of a socket (`IORING_OP_SOCKET`, Linux 5.19): straight into
    /// registered-file slot `slot` (no descriptor; the result is 0), or as a plain descriptor (the
    /// result). A connect linked after it (``SubmissionOptions/link``) can use the slot at once.
    /// - Parameters:
    ///   - domain: `AF_INET` or `AF_INET6`.
    ///   - type: `SOCK_STREAM`, with `SOCK_CLOEXEC` or `SOCK_NONBLOCK` as wanted.
    ///   - slot: the registered-file slot to create it in, or nil for a descriptor.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareSocket(
        domain: Int32, type: Int32, intoSlot slot: UInt32?, tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_socket(sqe, domain, type, 0, 0)
        if let slot { curing_sqe_set_file_index(sqe, slot) }
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares a receive into a caller-owned buffer (`IORING_OP_RECV`). The buffer must stay
    /// valid until the completion arrives. The result is the byte count, 0 at end of stream.
    /// - Parameters:
    ///   - socket: the socket to read.
    ///   - buffer: where the bytes go.
    ///   - flags: `MSG_*` flags for `recv(2)`.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareRecv(
        _ socket: FileRef, into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0,
        tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_recv(sqe, socket.raw, buffer.baseAddress, buffer.count, flags)
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares a receive that takes its buffer from a provided-buffer ring
    /// (`IOSQE_BUFFER_SELECT`), optionally multishot (`IORING_RECV_MULTISHOT`, Linux 6.0).
    ///
    /// Each completion names the buffer it filled (``Completion/bufferID``); give it back with
    /// ``BufferRing/recycle(_:)``. When the ring is empty the request ends with `ENOBUFS` and the
    /// data stays in the socket: submit it again once buffers are back.
    /// - Parameters:
    ///   - socket: the socket to read.
    ///   - group: the buffer group id of the ``BufferRing``.
    ///   - multishot: keep receiving with one request.
    ///   - bundle: take several buffers per completion (`IORING_RECVSEND_BUNDLE`, Linux 6.10);
    ///     the completion names the first, the rest follow it in the ring
    ///     (``BufferRing/position(of:)``, ``BufferRing/buffer(atPosition:)``).
    ///   - maxLength: the most bytes to take (0: as many as the buffer, or with `bundle` the
    ///     buffers, hold). With an incremental ring it bounds what the receive consumes; with
    ///     multishot it bounds each completion and needs a kernel that allows that.
    ///   - limit: with `multishot`, the most bytes the whole request takes before it ends without
    ///     `IORING_CQE_F_MORE` (0: no limit). Linux 6.17; older kernels refuse it with `EINVAL`.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareRecv(
        _ socket: FileRef, bufferGroup group: UInt16, multishot: Bool, bundle: Bool = false, maxLength: UInt32 = 0,
        limit: UInt32 = 0, tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_recv(sqe, socket.raw, nil, Int(maxLength), 0)
        if multishot {
            curing_sqe_add_ioprio(sqe, recvMultishotFlag)
            if limit > 0 { curing_sqe_set_receive_limit(sqe, limit) }
        }
        if bundle { curing_sqe_add_ioprio(sqe, UInt16(CURING_RECVSEND_BUNDLE)) }
        curing_sqe_set_buffer_group(sqe, group)
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares a read (`IORING_OP_READ`) from a non-socket descriptor such as an eventfd, at the
    /// file's current position. The buffer must stay valid until the completion arrives.
    /// - Parameters:
    ///   - file: the descriptor.
    ///   - buffer: where the bytes go.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareRead(
        _ file: FileRef, into buffer: UnsafeMutableRawBufferPointer, tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_read(sqe, file.raw, buffer.baseAddress, UInt32(buffer.count), UInt64.max)
        finish(sqe, tag, options, fixed: file.isFixed)
    }

    /// Prepares a send (`IORING_OP_SEND`) with `MSG_NOSIGNAL` always added, so a closed peer is an
    /// `EPIPE` result, never a `SIGPIPE`. The result may be short of `buffer.count`: send the rest
    /// from where it stopped. The buffer must stay valid until the completion arrives.
    /// - Parameters:
    ///   - socket: the socket to write.
    ///   - buffer: the bytes to send.
    ///   - flags: further `MSG_*` flags.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareSend(
        _ socket: FileRef, from buffer: UnsafeRawBufferPointer, flags: Int32 = 0, tag: UInt64,
        options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_send(sqe, socket.raw, buffer.baseAddress, buffer.count, flags | Int32(MSG_NOSIGNAL))
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares a gathering send (`IORING_OP_SENDMSG`) with `MSG_NOSIGNAL` always added: one
    /// request for several buffers (`message.msg_iov`). The header, its iovecs and the bytes must
    /// stay valid until the completion arrives; the result may be short: continue from there.
    /// - Parameters:
    ///   - socket: the socket to write.
    ///   - message: the `msghdr` naming the buffers.
    ///   - flags: further `MSG_*` flags.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareSendMessage(
        _ socket: FileRef, _ message: UnsafePointer<msghdr>, flags: Int32 = 0, tag: UInt64,
        options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_sendmsg(sqe, socket.raw, message, UInt32(bitPattern: flags | Int32(MSG_NOSIGNAL)))
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares a close (`IORING_OP_CLOSE`) of a plain descriptor or of a registered slot
    /// (`close_direct`, which frees the slot for reuse).
    ///
    /// A close does not end a request still pending on the socket: such a recv keeps the socket
    /// open and swallows the peer's next bytes. Cancel (``prepareCancel(_:all:tag:options:)``) or
    /// shut down first, and close when nothing is in flight.
    /// - Parameters:
    ///   - file: the fd or slot.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareClose(_ file: FileRef, tag: UInt64, options: SubmissionOptions = []) throws(URingError) {
        let sqe = try nextSQE()
        if file.isFixed {
            io_uring_prep_close_direct(sqe, UInt32(bitPattern: file.raw))
        } else {
            io_uring_prep_close(sqe, file.raw)
        }
        finish(sqe, tag, options, fixed: false)
    }

    /// A socket option a request can set (``prepareSetSocketOption(_:_:tag:options:)``).
    public enum SocketOption: Sendable {
        /// `TCP_NODELAY` on: small segments go out at once (no Nagle delay behind an unacked one).
        case noDelay
        /// `SO_LINGER` {on, 0}: the close that follows resets the connection (an RST, unsent data
        /// dropped) instead of sending a FIN.
        case resetOnClose
    }

    /// Prepares a `setsockopt` done by the ring (`IORING_OP_URING_CMD`,
    /// `SOCKET_URING_OP_SETSOCKOPT`, Linux 6.7): the one way to set an option on a socket that
    /// lives only in a registered-file slot. Older kernels fail it (`EOPNOTSUPP` or `EINVAL`).
    /// - Parameters:
    ///   - socket: the socket (slot or descriptor).
    ///   - option: which option, set to its fixed value.
    ///   - tag: the request's `user_data`.
    ///   - options: submission flags (a link to the request that needs the option).
    public func prepareSetSocketOption(
        _ socket: FileRef, _ option: SocketOption, tag: UInt64, options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        switch option {
        case .noDelay:
            curing_prep_setsockopt(
                sqe, socket.raw, Int32(IPPROTO_TCP), TCP_NODELAY, curing_option_on_pointer(),
                UInt32(MemoryLayout<Int32>.size))
        case .resetOnClose:
            curing_prep_setsockopt(
                sqe, socket.raw, SOL_SOCKET, SO_LINGER, curing_linger_reset_pointer(), UInt32(MemoryLayout<linger>.size))
        }
        finish(sqe, tag, options, fixed: socket.isFixed)
    }

    /// Prepares a `shutdown(2)` (`IORING_OP_SHUTDOWN`).
    /// - Parameters:
    ///   - socket: the socket.
    ///   - how: `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareShutdown(_ socket: FileRef, how: Int32, tag: UInt64, options: SubmissionOptions = [])
        throws(URingError)
    {
        let sqe = try nextSQE()
        io_uring_prep_shutdown(sqe, socket.raw, how)
        finish(sqe, tag, options, fixed: socket.isFixed)
    }
}
