import SocketPool

/// The sessions whose receive ended with `ENOBUFS`, first come first served, for a receiver over
/// a provided-buffer ring to re-arm as buffers come back.
///
/// Links by session index, kept apart from the sessions because an index can be reused (and,
/// unpooled, its session freed) while still linked; entries whose session no longer waits are
/// skipped when popped. Made once per ring: adding and popping allocate nothing.
struct BufferWaitList: ~Copyable {
    let next: UnsafeMutablePointer<Int32>
    let linked: UnsafeMutablePointer<Bool>
    var head: Int32 = -1
    var tail: Int32 = -1

    init(sessions: Int) {
        next = .allocate(capacity: max(sessions, 1))
        next.initialize(repeating: -1, count: max(sessions, 1))
        linked = .allocate(capacity: max(sessions, 1))
        linked.initialize(repeating: false, count: max(sessions, 1))
    }

    deinit {
        next.deallocate()
        linked.deallocate()
    }

    var isEmpty: Bool { head < 0 }

    /// Marks `s` as waiting for buffers and links it at the end (once).
    mutating func add(_ s: ConnectionRef) {
        s.pointee.lifecycle.waitingForBuffers(true)
        let index = Int32(s.pointee.session.index)
        guard !linked[Int(index)] else { return }
        linked[Int(index)] = true
        next[Int(index)] = -1
        if tail >= 0 { next[Int(tail)] = index } else { head = index }
        tail = index
    }

    /// Unlinks the first session that still waits, clears its waiting mark and returns it; nil
    /// when none is left.
    mutating func pop(_ sessions: borrowing SessionPool<ConnectionRecord>) -> ConnectionRef? {
        while head >= 0 {
            let index = Int(head)
            head = next[index]
            if head < 0 { tail = -1 }
            linked[index] = false
            next[index] = -1
            guard let s = sessions.record(at: index), s.pointee.lifecycle.flags.contains(.waitingForBuffers) else {
                continue
            }
            s.pointee.lifecycle.waitingForBuffers(false)
            return s
        }
        return nil
    }

    /// ``pop(_:)`` for a re-arm: the first waiting session that still wants to receive (the
    /// others are unlinked and dropped), counted in `receiveRearms`; nil when none is left.
    mutating func popToRearm(_ core: LoopCore) -> ConnectionRef? {
        while let s = pop(core.sessions) {
            guard s.pointee.lifecycle.wantsReceive else { continue }
            core.stats.receiveRearms &+= 1
            return s
        }
        return nil
    }
}
