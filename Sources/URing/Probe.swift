import CURing

/// Which opcodes the running kernel supports (`io_uring_get_probe_ring`).
public struct Probe: Sendable, Hashable {
    /// The highest opcode the kernel knows, plus one.
    public let opcodeCount: Int
    private var supported: [Bool]

    /// Whether the kernel supports `opcode`.
    /// - Parameter opcode: the request type.
    public func supports(_ opcode: Opcode) -> Bool {
        Int(opcode.rawValue) < supported.count && supported[Int(opcode.rawValue)]
    }

    /// A probe result made by hand: what a kernel that supports exactly `opcodes` would report
    /// (tests of the paths older kernels take).
    /// - Parameter opcodes: the supported opcodes.
    package init(opcodes: Set<Opcode>) {
        opcodeCount = Int(opcodes.map(\.rawValue).max() ?? 0) + 1
        supported = (0..<256).map { op in opcodes.contains(Opcode(rawValue: UInt8(op))) }
    }

    init(_ probe: UnsafeMutablePointer<io_uring_probe>) {
        let count = Int(probe.pointee.last_op) + 1
        opcodeCount = count
        supported = (0..<256).map { op in op < count && io_uring_opcode_supported(probe, Int32(op)) != 0 }
    }
}

extension Ring {
    /// Asks the kernel which opcodes it supports (`io_uring_get_probe_ring`).
    /// - Returns: the probe result.
    /// - Throws: ``URingError`` with `ENOMEM` or `EINVAL` when the probe fails.
    public func probe() throws(URingError) -> Probe {
        guard let probe = io_uring_get_probe_ring(ring) else {
            throw URingError("io_uring_get_probe_ring", errno: .current)
        }
        defer { io_uring_free_probe(probe) }
        return Probe(probe)
    }
}
