import Foundation
import Glibc
import SocketPool
import TestSupport

/// A deliberately small echo loop over the pools, driven by the test thread: single-shot accept
/// (into a leased slot, or a descriptor), recv into the session buffer, send it back (continuing
/// short sends), close at EOF or error, recycle at in-flight zero. It exists to exercise the pools
/// the way a server does; the real server is the EchoServer module.
///
/// Nothing in `handle` allocates in pooled mode, so allocation counts around it measure the pools.
final class MiniEchoDriver {
    let ring: Ring
    var contexts: ContextSlab
    var sessions: SessionPool
    var slots: SlotPool
    let mode: PoolMode
    let listener: Int32
    let port: UInt16

    var acceptArmed = false
    var paused = false
    var accepted = 0
    var closed = 0
    var unexpected = 0
    var staleSeen = 0
    var descriptorAccepts = 0
    var slotAccepts = 0
    var slotsUsed = Set<UInt32>()
    var recordSlots = true
    /// Called after every close completes, with the number closed so far.
    var onClosed: ((Int) -> Void)?

    init(mode: PoolMode, slots slotCount: UInt32, sessions: Int, policy: SlotExhaustionPolicy = .backpressure,
         bufferSize: Int = 4096) throws {
        ring = try Ring()
        self.mode = mode
        contexts = ContextSlab(capacity: sessions * 4 + 8)
        self.sessions = SessionPool(mode: mode, capacity: sessions, bufferSize: bufferSize)
        slots = try SlotPool(ring: ring, capacity: slotCount, policy: policy)
        listener = try Sockets.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!, backlog: 512)
        port = try Sockets.localAddress(listener).port
    }

    deinit { close(listener) }

    func armAccept() throws(URingError) {
        guard !acceptArmed else { return }
        guard let tag = contexts.acquire(.accept) else { unexpected += 1; return }
        let ctx = contexts.context(tag)
        if mode == .unpooled {
            try ring.prepareAccept(.fd(listener), tag: tag.rawValue)
            ctx.pointee.user = UInt64.max
        } else {
            switch slots.nextAcceptTarget() {
            case .slot(let lease):
                ctx.pointee.user = UInt64(lease.index) << 32 | UInt64(lease.generation)
                try ring.prepareAccept(.fd(listener), into: .slot(lease.index), tag: tag.rawValue)
            case .descriptor:
                ctx.pointee.user = UInt64.max
                try ring.prepareAccept(.fd(listener), tag: tag.rawValue)
            case .pause:
                contexts.release(tag)
                paused = true
                return
            }
        }
        paused = false
        acceptArmed = true
    }

    /// Runs the loop until `done()` or `timeout`.
    func run(timeout: Duration = .seconds(30), until done: () -> Bool) throws {
        try armAccept()
        let deadline = ContinuousClock.now + timeout
        while !done() && ContinuousClock.now < deadline {
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            try ring.forEachCompletion { (c: Completion) throws(URingError) in try handle(c) }
        }
    }

    func handle(_ c: Completion) throws(URingError) {
        let tag = RequestTag(rawValue: c.tag)
        guard let ctx = contexts.resolve(tag) else {
            staleSeen += 1
            return
        }
        switch tag.kind {
        case .accept:
            acceptArmed = false
            let user = ctx.pointee.user
            contexts.release(tag)
            let lease: SlotLease? =
                user == .max ? nil : SlotLease(index: UInt32(user >> 32), generation: UInt32(truncatingIfNeeded: user))
            if c.result < 0 {
                if let lease { slots.release(lease) }
                unexpected += 1
            } else {
                accepted += 1
                let file: FileRef
                if let lease {
                    file = lease.file
                    slotAccepts += 1
                    if recordSlots { slotsUsed.insert(lease.index) }
                } else {
                    file = .fd(c.result)
                    descriptorAccepts += 1
                }
                if let handle = sessions.acquire(file: file, slotGeneration: lease?.generation ?? 0) {
                    try postRecv(handle)
                } else {
                    unexpected += 1
                }
            }
            try armAccept()
        case .recv:
            let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
            contexts.release(tag)
            guard let s = sessions.resolve(handle) else { unexpected += 1; return }
            s.pointee.inFlight -= 1
            if c.result > 0 {
                s.pointee.pendingStart = 0
                s.pointee.pendingEnd = Int(c.result)
                s.pointee.bytesIn += UInt64(c.result)
                try postSend(handle, s)
            } else {
                if c.result < 0 && c.error != .connectionReset { unexpected += 1 }
                try postClose(handle, s)
            }
        case .send:
            let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
            contexts.release(tag)
            guard let s = sessions.resolve(handle) else { unexpected += 1; return }
            s.pointee.inFlight -= 1
            if c.result < 0 {
                try postClose(handle, s)
                return
            }
            s.pointee.pendingStart += Int(c.result)
            s.pointee.bytesOut += UInt64(c.result)
            if s.pointee.pendingBytes > 0 { try postSend(handle, s) } else { try postRecv(handle) }
        case .close:
            let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
            contexts.release(tag)
            guard let s = sessions.resolve(handle) else { unexpected += 1; return }
            s.pointee.inFlight -= 1
            if c.result < 0 { unexpected += 1 }
            if s.pointee.file.isFixed {
                slots.release(SlotLease(index: UInt32(bitPattern: s.pointee.file.raw), generation: s.pointee.slotGeneration))
            }
            if !sessions.release(handle) { unexpected += 1 }
            closed += 1
            onClosed?(closed)
            if paused { try armAccept() }
        default:
            unexpected += 1
        }
    }

    func postRecv(_ handle: SessionHandle) throws(URingError) {
        guard let s = sessions.resolve(handle), let tag = contexts.acquire(.recv, session: handle.index,
                                                                              sessionGeneration: handle.generation)
        else { unexpected += 1; return }
        s.pointee.inFlight += 1
        try ring.prepareRecv(s.pointee.file, into: s.pointee.buffer, tag: tag.rawValue)
    }

    func postSend(_ handle: SessionHandle, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard let tag = contexts.acquire(.send, session: handle.index, sessionGeneration: handle.generation)
        else { unexpected += 1; return }
        s.pointee.inFlight += 1
        let bytes = UnsafeRawBufferPointer(rebasing: s.pointee.buffer[s.pointee.pendingStart..<s.pointee.pendingEnd])
        try ring.prepareSend(s.pointee.file, from: bytes, tag: tag.rawValue)
    }

    func postClose(_ handle: SessionHandle, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard let tag = contexts.acquire(.close, session: handle.index, sessionGeneration: handle.generation)
        else { unexpected += 1; return }
        s.pointee.state = .closing
        s.pointee.inFlight += 1
        try ring.prepareClose(s.pointee.file, tag: tag.rawValue)
    }
}

/// Runs `body` on a new thread and returns a function that waits for it (bounded).
func spawn(_ body: @escaping @Sendable () -> Void) -> @Sendable (Duration) -> Bool {
    final class Flag: @unchecked Sendable {  // written once by the thread, read after; guarded by the mutex
        var done = false
        var mutex = pthread_mutex_t()
        init() { pthread_mutex_init(&mutex, nil) }
    }
    let flag = Flag()
    let thread = Thread {
        body()
        pthread_mutex_lock(&flag.mutex)
        flag.done = true
        pthread_mutex_unlock(&flag.mutex)
    }
    thread.start()
    return { timeout in
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            pthread_mutex_lock(&flag.mutex)
            let d = flag.done
            pthread_mutex_unlock(&flag.mutex)
            if d { return true }
            usleep(1000)
        }
        return false
    }
}
