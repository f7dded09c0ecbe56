// A line-based chat over every ring of the server: each `\n`-terminated line a client sends goes,
// unchanged, to every other connected client, on every ring, in the order it was sent, and never
// back to its sender. Shows the handler API beyond the in-place reply: per-connection state sized
// once in `start(capacity:)`, `Connection.write` to other connections of the ring, `RingContext.post`
// to the other rings, and the output bound (`WriteResult.full`) used to cut off slow readers.
//
//   chat-server [--host H] [--port P] [--threads N] [--max-pending BYTES] [--mailbox-bytes BYTES] [--driver auto|uring|epoll]
//
// The first line on stdout is `listening on HOST:PORT`. SIGTERM or SIGINT stops it gracefully
// (exit 0); a bad flag exits 64.
//
// Design:
// - Lines are at most 4,096 bytes including the newline; a client sending a longer one is closed.
//   A partial line waits in that connection's 4 KiB slot of one flat buffer made in `start`, so a
//   line split over reads costs one copy and no allocation. Complete lines that arrive in one
//   read are forwarded straight from the receive buffer, as one span, without copying.
// - Each ring keeps its open connections in a compact list. A span of lines is written to every
//   other connection of the sender's ring and posted once to each other ring, whose handler
//   writes it to all of its connections. Order per sender holds: one sender is served by one ring,
//   writes queue in order, and mail from one ring to another is delivered in order.
// - A receiver whose queued output would pass `--max-pending` (default 4 MiB) is aborted, so one
//   client that does not read costs at most that much and never slows the others. A write can also
//   be refused because the receiver holds its share of the ring's outbound buffers: every
//   connection is guaranteed 64 KiB of them, and beyond that connections share the pool, none
//   taking more than stays free, so a receiver that keeps reading is never refused, whatever the
//   others hold, and one refused for its share is a slow reader among slow readers. It is aborted
//   too (logged differently), since dropping lines silently would break its stream. (A burst is
//   absorbed by buffering, not slowed: pausing the sender would let one slow reader stall all.)
// - A post to another ring is refused when the mailbox from this ring to that one is full (the
//   target ring is far behind). The API cannot wait for room, so the span is dropped for that
//   ring's clients and the drop is logged to stderr (rate-limited). The mailboxes are sized
//   generously (each the largest power of two up to 16 MiB / threads, at least 1 MiB;
//   `--mailbox-bytes`) to make this rare.
import Dispatch
import EchoServer
import Glibc

/// Longest line, newline included.
let maxLine = 4096

/// Writes one line to stderr (unbuffered, safe from any thread).
func logError(_ message: String) {
    var text = message + "\n"
    text.withUTF8 { bytes in
        var rest = UnsafeRawBufferPointer(bytes)
        while !rest.isEmpty {
            let n = write(2, rest.baseAddress, rest.count)
            if n <= 0 { break }
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
        }
    }
}

struct ChatHandler: ConnectionHandler {
    /// The per-receiver output bound (``ServerConfiguration/maxOutputBytesPerConnection``), to tell
    /// a slow receiver from an empty buffer pool when a write is refused.
    let maxOutput: Int
    /// Each connection's partial line: `maxLine` bytes per session index.
    var partial: [UInt8] = []
    var partialLength: [Int] = []
    /// The open connection at each session index, if any.
    var members: [ConnectionID?] = []
    /// Session indices of the open connections, in no order; `position` finds one in it.
    var open: [Int] = []
    var position: [Int] = []
    /// Posts refused because a mailbox was full.
    var droppedPosts: UInt64 = 0

    mutating func start(capacity: Int) {
        partial = Array(repeating: 0, count: capacity * maxLine)
        partialLength = Array(repeating: 0, count: capacity)
        members = Array(repeating: nil, count: capacity)
        position = Array(repeating: -1, count: capacity)
        open = []
        open.reserveCapacity(capacity)
    }

    mutating func opened(_ connection: Connection) {
        let i = connection.index
        members[i] = connection.id
        partialLength[i] = 0
        position[i] = open.count
        open.append(i)
    }

    mutating func closed(_ id: ConnectionID) {
        let i = id.index
        guard members[i] == id else { return }
        members[i] = nil
        partialLength[i] = 0
        let p = position[i]
        let last = open.removeLast()
        if last != i {
            open[p] = last
            position[last] = p
        }
        position[i] = -1
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let i = connection.index
        let ring = connection.ring
        let input = UnsafeRawBufferPointer(bytes)
        let n = input.count
        var start = 0
        var failedPosts = 0

        // First finish the line left over from earlier reads, if any.
        let pending = partialLength[i]
        if pending > 0 {
            guard let newline = Self.newline(in: input, from: 0) else {
                guard pending + n < maxLine else { return tooLong(connection) }
                Self.append(input, to: &partial, at: i * maxLine + pending)
                partialLength[i] = pending + n
                return .nothing
            }
            let length = pending + newline + 1
            guard length <= maxLine else { return tooLong(connection) }
            Self.append(UnsafeRawBufferPointer(rebasing: input[0...newline]), to: &partial, at: i * maxLine + pending)
            partialLength[i] = 0
            failedPosts += partial.withUnsafeBytes { all in
                broadcast(UnsafeRawBufferPointer(rebasing: all[(i * maxLine)..<(i * maxLine + length)]), from: connection.id, ring: ring)
            }
            start = newline + 1
        }

        // Then every complete line of this read, forwarded in place as one span.
        var end = start
        var tooLongLine = false
        while let newline = Self.newline(in: input, from: end) {
            if newline + 1 - end > maxLine {
                tooLongLine = true
                break
            }
            end = newline + 1
        }
        if end > start {
            failedPosts += broadcast(UnsafeRawBufferPointer(rebasing: input[start..<end]), from: connection.id, ring: ring)
        }
        noteDroppedPosts(failedPosts, ring: ring)
        if tooLongLine || n - end >= maxLine { return tooLong(connection) }

        // Keep the unfinished rest.
        if end < n {
            Self.append(UnsafeRawBufferPointer(rebasing: input[end..<n]), to: &partial, at: i * maxLine)
            partialLength[i] = n - end
        }
        return .nothing
    }

    mutating func received(message: RingMessage, ring: RingContext) {
        deliver(message.bytes, except: nil, ring: ring)
    }

    // MARK: Helpers

    mutating func tooLong(_ connection: Connection) -> Reply {
        partialLength[connection.index] = 0
        logError("chat-server: \(connection.id) on ring \(connection.ring.index) sent a line over \(maxLine) bytes; closing it")
        return .close
    }

    mutating func noteDroppedPosts(_ count: Int, ring: RingContext) {
        guard count > 0 else { return }
        for _ in 0..<count {
            droppedPosts &+= 1
            // 1, 2, 4, 8, ...: enough to see it happen without flooding stderr.
            if droppedPosts & (droppedPosts - 1) == 0 {
                logError("chat-server: ring \(ring.index): mailbox to another ring full, lines dropped (\(droppedPosts) posts so far)")
            }
        }
    }

    /// Sends `lines` to every other connection of this ring and posts it to every other ring.
    /// - Returns: the number of rings whose mailbox refused it.
    func broadcast(_ lines: UnsafeRawBufferPointer, from sender: ConnectionID, ring: RingContext) -> Int {
        deliver(lines, except: sender, ring: ring)
        var refused = 0
        for target in 0..<ring.count where target != ring.index {
            if ring.post(lines, toRing: target) == .full { refused += 1 }
        }
        return refused
    }

    /// Writes `lines` to every open connection of this ring but `sender`; aborts a receiver whose
    /// output is over its bound, or over its share of the ring's outbound buffers.
    func deliver(_ lines: UnsafeRawBufferPointer, except sender: ConnectionID?, ring: RingContext) {
        for i in open {
            guard let id = members[i], id != sender else { continue }
            if ring.write(lines, to: id) == .full {
                let queued = ring.queuedBytes(id) ?? 0
                if queued + lines.count > maxOutput {
                    logError("chat-server: \(id) on ring \(ring.index) is over its output bound (\(queued) bytes queued); aborting it")
                } else {
                    logError("chat-server: \(id) on ring \(ring.index) holds its share of the outbound buffers (\(queued) bytes queued, slow readers share the pool); aborting it")
                }
                ring.abort(id)
            }
        }
    }

    static func newline(in bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard start < bytes.count, let base = bytes.baseAddress else { return nil }
        guard let found = memchr(base + start, 0x0A, bytes.count - start) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    static func append(_ bytes: UnsafeRawBufferPointer, to storage: inout [UInt8], at offset: Int) {
        guard !bytes.isEmpty else { return }
        storage.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }
}

// MARK: Command line

let usage = "usage: chat-server [--host H] [--port P] [--threads N] [--max-pending BYTES] [--mailbox-bytes BYTES] [--driver auto|uring|epoll]"

func fail(_ message: String) -> Never {
    logError("chat-server: \(message)")
    logError(usage)
    exit(64)
}

var config = ServerConfiguration()
config.port = 7780
config.threads = 1
config.idleTimeout = nil  // chat clients may be silent for long
config.maxOutputBytesPerConnection = 4 << 20
var mailboxBytes: Int?

var arguments = CommandLine.arguments.dropFirst()[...]
while let flag = arguments.popFirst() {
    var name = flag
    var inlineValue: String?
    if flag.hasPrefix("--"), let eq = flag.firstIndex(of: "=") {
        name = String(flag[..<eq])
        inlineValue = String(flag[flag.index(after: eq)...])
    }
    if name == "--help" || name == "-h" {
        print(usage)
        exit(0)
    }
    guard ["--host", "--port", "--threads", "--max-pending", "--mailbox-bytes", "--driver"].contains(name) else {
        fail("unknown argument '\(flag)'")
    }
    guard let value = inlineValue ?? arguments.popFirst() else { fail("\(name) needs a value") }
    switch name {
    case "--host":
        config.host = value
    case "--driver":
        guard let driver = ServerConfiguration.Driver(flag: value) else {
            fail("--driver must be auto, uring or epoll, got '\(value)'")
        }
        config.driver = driver
    case "--port":
        guard let port = UInt16(value) else { fail("--port must be 0...65535, got '\(value)'") }
        config.port = port
    case "--threads":
        guard let threads = Int(value), (1...256).contains(threads) else { fail("--threads must be 1...256, got '\(value)'") }
        config.threads = threads
    case "--max-pending":
        guard let bytes = Int(value), bytes >= maxLine, bytes <= 1 << 30 else {
            fail("--max-pending must be \(maxLine)...\(1 << 30) bytes, got '\(value)'")
        }
        config.maxOutputBytesPerConnection = bytes
    default:  // --mailbox-bytes
        guard let bytes = Int(value), bytes >= 64 << 10, bytes <= 1 << 30, bytes & (bytes - 1) == 0 else {
            fail("--mailbox-bytes must be a power of two in 65536...\(1 << 30), got '\(value)'")
        }
        mailboxBytes = bytes
    }
}

// The shared outbound buffers (of bufferSize bytes, per ring, beyond each connection's guaranteed
// 64 KiB): room for sixteen receivers at their bound (64 MiB of address space per ring at the
// default bound; pages are touched only as bursts need them), so a lone slow receiver meets its
// bound before its share (one connection may hold half the pool).
config.outboundBuffers = min(1 << 20, max(4096, 16 * config.maxOutputBytesPerConnection / config.bufferSize))
// One mailbox per ordered pair of rings, threads² of them: each the largest power of two up to
// 16 MiB / threads, at least 1 MiB (the library's default).
var defaultMailbox = 1 << 20
while config.threads > 1 && defaultMailbox * 2 * config.threads <= 16 << 20 { defaultMailbox <<= 1 }
config.mailboxBytes = mailboxBytes ?? defaultMailbox

let bound = config.maxOutputBytesPerConnection
let server = Server(configuration: config) { [bound] in ChatHandler(maxOutput: bound) }
do {
    try server.start()
} catch {
    logError("chat-server: \(error)")
    if case .invalidConfiguration = error { exit(64) }
    exit(1)
}

// The contract's first line, flushed at once (stdout may be a pipe).
var listening = "listening on \(server.boundAddress!)\n"
listening.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }

signal(SIGTERM, SIG_IGN)
signal(SIGINT, SIG_IGN)
let stopOnTerm = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
stopOnTerm.setEventHandler { @Sendable in server.stop() }
stopOnTerm.resume()
let stopOnInt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
stopOnInt.setEventHandler { @Sendable in server.stop() }
stopOnInt.resume()
server.wait()
let stats = server.statistics
logError("chat-server: stopped after \(stats.accepted) connections")
exit(0)
