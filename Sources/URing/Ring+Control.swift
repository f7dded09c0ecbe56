import CURing
import Glibc

// Requests that act on other requests, on time, or on another ring: cancel, timeouts, MSG_RING.
// The socket and file requests are in Ring+Prepare.swift.
extension Ring {
    /// Prepares a cancel of the request(s) submitted with `user_data == target`
    /// (`IORING_OP_ASYNC_CANCEL`). The cancelled request completes with `ECANCELED`; this one
    /// with the number cancelled (with `all`) or 0, or `ENOENT` when nothing matched, or
    /// `EALREADY` when the target was already running.
    /// - Parameters:
    ///   - target: the `user_data` to cancel.
    ///   - all: cancel every match (`IORING_ASYNC_CANCEL_ALL`), not only the first.
    ///   - tag: this request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareCancel(_ target: UInt64, all: Bool = false, tag: UInt64, options: SubmissionOptions = [])
        throws(URingError)
    {
        let sqe = try nextSQE()
        io_uring_prep_cancel64(sqe, target, all ? cancelAll : 0)
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares a cancel of every request pending on `file` (`IORING_ASYNC_CANCEL_FD`, with
    /// `IORING_ASYNC_CANCEL_FD_FIXED` for a slot; Linux 6.0). The result is the number cancelled,
    /// or `ENOENT` when none was pending.
    /// - Parameters:
    ///   - file: the fd or slot whose requests to cancel.
    ///   - tag: this request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareCancel(file: FileRef, tag: UInt64, options: SubmissionOptions = []) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_cancel_fd(sqe, file.raw, UInt32(cancelAll) | (file.isFixed ? cancelFixedFD : 0))
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares a timeout (`IORING_OP_TIMEOUT`): completes with `ETIME` after `duration`, or with 0
    /// once `count` other completions have arrived (when `count` > 0).
    /// - Parameters:
    ///   - duration: how long; copied into the ring's memory.
    ///   - count: completions that end the timeout early, 0 for none.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareTimeout(_ duration: Duration, count: UInt32 = 0, tag: UInt64, options: SubmissionOptions = [])
        throws(URingError)
    {
        let sqe = try nextSQE()
        let slot = scratchSlot(sqe)
        slot.pointee.timespec = __kernel_timespec(duration)
        io_uring_prep_timeout(sqe, &slot.pointee.timespec, count, 0)
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares a linked timeout (`IORING_OP_LINK_TIMEOUT`) for the entry prepared just before,
    /// which must carry ``SubmissionOptions/link``. If `duration` passes first, that request is
    /// cancelled (`ECANCELED`) and this one completes with `ETIME`; otherwise this one completes
    /// with `ECANCELED`.
    /// - Parameters:
    ///   - duration: how long the linked request may take.
    ///   - tag: the request's `user_data`.
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareLinkTimeout(_ duration: Duration, tag: UInt64, options: SubmissionOptions = [])
        throws(URingError)
    {
        let sqe = try nextSQE()
        let slot = scratchSlot(sqe)
        slot.pointee.timespec = __kernel_timespec(duration)
        io_uring_prep_link_timeout(sqe, &slot.pointee.timespec, 0)
        finish(sqe, tag, options, fixed: false)
    }

    /// Prepares a message to another ring (`IORING_OP_MSG_RING`, Linux 5.18): a completion with
    /// `user_data == targetTag` and `res == result` appears on the ring whose fd is `ringDescriptor`.
    /// This is how one ring wakes or stops another without a lock.
    /// - Parameters:
    ///   - ringDescriptor: the target ring's ``Ring/descriptor``.
    ///   - result: the `res` of the completion posted there.
    ///   - targetTag: the `user_data` of the completion posted there.
    ///   - tag: this request's `user_data` (its own completion reports the send's success).
    ///   - options: `IOSQE_*` flags.
    /// - Throws: ``URingError`` if no SQE could be had.
    @inlinable
    public func prepareMessage(
        toRing ringDescriptor: Int32, result: Int32, targetTag: UInt64, tag: UInt64,
        options: SubmissionOptions = []
    ) throws(URingError) {
        let sqe = try nextSQE()
        io_uring_prep_msg_ring(sqe, ringDescriptor, UInt32(bitPattern: result), targetTag, counters.pointee.injectedMessageFlags)
        finish(sqe, tag, options, fixed: false)
    }
}
