import CURing
import Glibc

/// One io_uring instance: the io_uring form of an IOCP completion port.
///
/// `Ring` owns a `struct io_uring` at a stable heap address, the memory its requests point into
/// (timeouts and connect addresses are copied there until submission) and the array completions are
/// harvested into. It is non-copyable and not `Sendable`: a ring belongs to the thread that made it,
/// which is also what `IORING_SETUP_SINGLE_ISSUER` promises the kernel. Create it on the thread that
/// will submit to it.
///
/// Setup tries a chain of flag sets (``RingOptions/flagPreference``) and keeps the first one the
/// kernel grants; ``setupFlags`` says which.
public struct Ring: ~Copyable {
    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    @usableFromInline let cqeBatch: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    @usableFromInline let cqeBatchCapacity: UInt32
    @usableFromInline let completionCopies: UnsafeMutablePointer<Completion>
    @usableFromInline let scratch: UnsafeMutablePointer<SubmissionScratch>
    @usableFromInline let counters: UnsafeMutablePointer<RingCounters>

    /// The setup flags the kernel granted (the first accepted entry of the preference chain,
    /// plus `IORING_SETUP_CQSIZE` when a completion queue size was asked for).
    public let setupFlags: SetupFlags
    /// The features the kernel reported at setup (`io_uring_params.features`).
    public let features: Features
    /// The flag sets tried before ``setupFlags`` and the errno each was refused with.
    package let refusedSetups: [(flags: SetupFlags, errno: Errno)]
    /// Submission queue size granted by the kernel.
    public let submissionEntries: UInt32
    /// Completion queue size granted by the kernel.
    public let completionEntries: UInt32
    /// The ring's file descriptor: the target of a `MSG_RING` request from another ring.
    public let descriptor: Int32
    /// Whether the ring fd was registered (`io_uring_register_ring_fd`), which spares the kernel a
    /// file table lookup on every `io_uring_enter`.
    public let ringDescriptorRegistered: Bool

    /// Creates a ring, trying each flag set of `options.flagPreference` in turn.
    ///
    /// Maps to `io_uring_queue_init_params`. A flag set refused with `EINVAL` (unknown or
    /// unsupported flags) moves on to the next; `ENOSYS` and `EPERM` (io_uring absent or disabled)
    /// stop at once, as nothing further down the chain could succeed.
    /// - Parameter options: sizes and the flag preference chain.
    /// - Throws: ``URingError`` for `io_uring_queue_init_params` when no flag set was granted.
    public init(_ options: RingOptions = RingOptions()) throws(URingError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        var refused: [(flags: SetupFlags, errno: Errno)] = []
        var granted: SetupFlags? = nil
        var params = io_uring_params()
        let chain = options.flagPreference.isEmpty ? [SetupFlags()] : options.flagPreference
        for candidate in chain {
            var flags = candidate
            params = io_uring_params()
            let cq = options.completionEntries ?? (options.entries &* 4)
            if cq > options.entries {
                flags.insert(.cqSize)
                params.cq_entries = cq
            }
            params.flags = flags.rawValue
            let result = io_uring_queue_init_params(options.entries, ring, &params)
            if result == 0 {
                granted = flags
                break
            }
            let errno = Errno(rawValue: -result)
            refused.append((candidate, errno))
            if errno == .notImplemented || errno == .notPermitted || errno == .noMemory {
                break
            }
        }
        guard let granted else {
            ring.deallocate()
            throw URingError("io_uring_queue_init_params", errno: refused.last?.errno ?? .invalidArgument)
        }
        self.ring = ring
        self.setupFlags = granted
        self.features = Features(rawValue: params.features)
        self.refusedSetups = refused
        self.submissionEntries = curing_sq_entries(ring)
        self.completionEntries = curing_cq_entries(ring)
        self.descriptor = Int32(bitPattern: curing_ring_fd(ring))
        self.cqeBatchCapacity = completionEntries
        self.cqeBatch = .allocate(capacity: Int(completionEntries))
        self.completionCopies = .allocate(capacity: Int(completionEntries))
        self.scratch = .allocate(capacity: Int(submissionEntries))
        self.scratch.initialize(repeating: SubmissionScratch(), count: Int(submissionEntries))
        self.counters = .allocate(capacity: 1)
        self.counters.initialize(to: RingCounters())
        self.ringDescriptorRegistered = options.registerRingDescriptor && io_uring_register_ring_fd(ring) == 1
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqeBatch.deallocate()
        completionCopies.deallocate()
        scratch.deallocate()
        counters.deallocate()
    }

    /// Counters kept by this ring since setup.
    public var statistics: RingCounters { counters.pointee }

    /// Completions the kernel had to hold back because the CQ was full (the CQ ring's overflow
    /// counter). With `IORING_FEAT_NODROP` none of them is lost; they are delivered once room frees.
    public var completionQueueOverflow: UInt32 { curing_cq_overflow(ring) }

    /// Submission entries prepared but not yet submitted.
    public var pendingSubmissions: UInt32 { io_uring_sq_ready(ring) }

    /// Completions ready to harvest without entering the kernel.
    public var readyCompletions: UInt32 { io_uring_cq_ready(ring) }

    // MARK: Submission

    /// Free submission queue entries: a chain of linked requests must fit whole (a submission
    /// that ends inside a chain breaks it), so make room first (``submit()``) when this is short.
    @inlinable
    public var submissionSpace: Int { Int(io_uring_sq_space_left(ring)) }

    /// Makes room for `count` entries (a linked chain that must not be split), submitting what is
    /// prepared when the queue is short. `EAGAIN` and `EBUSY` are retried a few times, as a full
    /// queue mid-batch is (the batch's completions are already harvested, so the kernel can post).
    /// - Parameter count: entries needed.
    /// - Throws: ``URingError`` when the queue cannot be drained.
    public func reserveSubmissions(_ count: Int) throws(URingError) {
        var tries = 0
        while submissionSpace < count {
            do {
                try submit()
            } catch where (error.errno == .wouldBlock || error.errno == .busy) && tries < 64 {
                counters.pointee.submitRetries &+= 1
            }
            tries += 1
            if submissionSpace < count && tries >= 64 { throw URingError("io_uring_submit", errno: .busy) }
        }
    }

    /// Submits every prepared entry. Maps to `io_uring_submit`.
    /// - Returns: the number of entries the kernel consumed.
    /// - Throws: ``URingError`` for `io_uring_submit` (`EINTR` is retried).
    @inlinable
    @discardableResult
    public func submit() throws(URingError) -> Int {
        while true {
            counters.pointee.submitCalls &+= 1
            let result = io_uring_submit(ring)
            if result >= 0 { return Int(result) }
            if result == -EINTR { continue }
            throw URingError("io_uring_submit", result: result)
        }
    }

    /// Submits every prepared entry and waits until at least `count` completions are ready.
    /// Maps to `io_uring_submit_and_wait`: one `io_uring_enter` per call.
    ///
    /// Under `IORING_SETUP_DEFER_TASKRUN` completions are only posted while the owning thread is in
    /// this call (or ``submitAndWait(_:timeout:)``), so a completion loop must wait here rather
    /// than only ``submit()``.
    /// - Parameter count: completions to wait for; 0 only submits (but still runs deferred work).
    /// - Returns: the number of entries the kernel consumed.
    /// - Throws: ``URingError`` for `io_uring_submit_and_wait`. `EINTR` returns 0 instead, so a
    ///   signal wakes the caller.
    @inlinable
    @discardableResult
    public func submitAndWait(_ count: UInt32 = 1) throws(URingError) -> Int {
        counters.pointee.submitCalls &+= 1
        if counters.pointee.injectedEnterFailure != 0 { return try failInjected("io_uring_submit_and_wait") }
        let result = io_uring_submit_and_wait(ring, count)
        if result >= 0 { return Int(result) }
        if result == -EINTR { return 0 }
        throw URingError("io_uring_submit_and_wait", result: result)
    }

    /// Submits every prepared entry and reaps what has completed, without waiting: with
    /// `DEFER_TASKRUN` this runs the deferred completion work a plain submit would leave pending.
    /// Maps to `io_uring_submit_and_get_events` (one `io_uring_enter` with `IORING_ENTER_GETEVENTS`
    /// and no minimum).
    /// - Returns: the number of entries submitted.
    /// - Throws: ``URingError`` for `io_uring_submit_and_get_events` (not for `EINTR`).
    @inlinable
    @discardableResult
    public func submitAndGetEvents() throws(URingError) -> Int {
        counters.pointee.submitCalls &+= 1
        if counters.pointee.injectedEnterFailure != 0 { return try failInjected("io_uring_submit_and_get_events") }
        let result = io_uring_submit_and_get_events(ring)
        if result >= 0 { return Int(result) }
        if result == -EINTR { return 0 }
        throw URingError("io_uring_submit_and_get_events", result: result)
    }

    /// Submits every prepared entry and waits until `count` completions are ready or `timeout`
    /// passes, whichever is first. Maps to `io_uring_submit_and_wait_timeout` (with
    /// `IORING_FEAT_EXT_ARG`, a single `io_uring_enter`).
    /// - Parameters:
    ///   - count: completions to wait for.
    ///   - timeout: the longest time to wait.
    /// - Returns: the number of entries submitted; 0 when the wait timed out or was interrupted.
    /// - Throws: ``URingError`` for `io_uring_submit_and_wait_timeout` (not for `ETIME`/`EINTR`).
    @inlinable
    @discardableResult
    public func submitAndWait(_ count: UInt32 = 1, timeout: Duration) throws(URingError) -> Int {
        counters.pointee.submitCalls &+= 1
        var ts = __kernel_timespec(timeout)
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        let result = io_uring_submit_and_wait_timeout(ring, &cqe, count, &ts, nil)
        if result >= 0 { return Int(result) }
        if result == -ETIME || result == -EINTR { return 0 }
        throw URingError("io_uring_submit_and_wait_timeout", result: result)
    }

    // MARK: Completion

    /// Copies every ready completion out of the CQ ring, marks them all seen with one CQ advance,
    /// then hands each to `body`.
    ///
    /// Maps to `io_uring_peek_batch_cqe` + `io_uring_cq_advance`: no allocation, no system call
    /// (unless the kernel flagged an overflow to flush). The CQ is emptied *before* `body` runs, so
    /// the requests `body` prepares — and the submits a full SQ forces meanwhile — find room for
    /// their completions instead of `EBUSY`. `body` must not harvest again from inside.
    /// - Parameter body: called once per completion, in queue order.
    /// - Returns: the number of completions handled.
    /// - Throws: what `body` throws; the rest of the batch is then dropped (it was already taken
    ///   off the ring), which is only right for a caller that stops on the error.
    @inlinable
    @discardableResult
    public func forEachCompletion<E: Error>(_ body: (Completion) throws(E) -> Void) throws(E) -> Int {
        if curing_sq_flags(ring) & UInt32(IORING_SQ_CQ_OVERFLOW) != 0 { counters.pointee.overflowedHarvests &+= 1 }
        let count = Int(io_uring_peek_batch_cqe(ring, cqeBatch, cqeBatchCapacity))
        if count == 0 { return 0 }
        for i in 0..<count {
            let cqe = cqeBatch[i].unsafelyUnwrapped
            completionCopies[i] = Completion(tag: cqe.pointee.user_data, result: cqe.pointee.res, flags: cqe.pointee.flags)
        }
        io_uring_cq_advance(ring, UInt32(count))
        counters.pointee.completions &+= UInt64(count)
        for i in 0..<count { try body(completionCopies[i]) }
        return count
    }
}

extension Ring {
    /// Makes the next ``submitAndWait(_:)`` fail with `errno` without entering the kernel: fault
    /// injection for the paths that handle `io_uring_enter` errors (`EAGAIN`, `EBUSY`, `EBADR`, ...).
    /// - Parameter errno: the error the next wait reports.
    package func injectEnterFailure(_ errno: Errno) {
        counters.pointee.injectedEnterFailure = errno.rawValue
    }

    /// Makes every later ``prepareMessage(toRing:result:targetTag:tag:options:)`` carry a
    /// `MSG_RING` flag no kernel knows, so the kernel refuses it with `EINVAL` as one without
    /// `IORING_OP_MSG_RING` would (fault injection for the fallback to eventfd wake-ups).
    package func refuseMessages() {
        counters.pointee.injectedMessageFlags = 1 << 31
    }

    @usableFromInline
    func failInjected(_ operation: String) throws(URingError) -> Int {
        let errno = Errno(rawValue: counters.pointee.injectedEnterFailure)
        counters.pointee.injectedEnterFailure = 0
        throw URingError(operation, errno: errno)
    }
}

extension __kernel_timespec {
    @inlinable
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let clamped = max(seconds, 0)
        self.init(tv_sec: Int64(clamped), tv_nsec: seconds < 0 ? 0 : Int64(attoseconds / 1_000_000_000))
    }
}
