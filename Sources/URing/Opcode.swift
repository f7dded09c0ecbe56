import CURing

/// An io_uring request type (`IORING_OP_*`).
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The opcode number.
    public let rawValue: UInt8
    /// Wraps an opcode number.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `IORING_OP_NOP`
    public static let nop = Opcode(rawValue: 0)
    /// `IORING_OP_TIMEOUT`
    public static let timeout = Opcode(rawValue: 11)
    /// `IORING_OP_ACCEPT`
    public static let accept = Opcode(rawValue: 13)
    /// `IORING_OP_ASYNC_CANCEL`
    public static let asyncCancel = Opcode(rawValue: 14)
    /// `IORING_OP_LINK_TIMEOUT`
    public static let linkTimeout = Opcode(rawValue: 15)
    /// `IORING_OP_CONNECT`
    public static let connect = Opcode(rawValue: 16)
    /// `IORING_OP_CLOSE`
    public static let close = Opcode(rawValue: 19)
    /// `IORING_OP_SEND`
    public static let send = Opcode(rawValue: 26)
    /// `IORING_OP_RECV`
    public static let recv = Opcode(rawValue: 27)
    /// `IORING_OP_PROVIDE_BUFFERS`
    public static let provideBuffers = Opcode(rawValue: 31)
    /// `IORING_OP_SHUTDOWN`
    public static let shutdown = Opcode(rawValue: 34)
    /// `IORING_OP_MSG_RING` (Linux 5.18)
    public static let msgRing = Opcode(rawValue: 40)
    /// `IORING_OP_SOCKET` (Linux 5.19, the release of multishot accept and sparse file tables)
    public static let socket = Opcode(rawValue: 45)
    /// `IORING_OP_URING_CMD` (Linux 5.19; socket commands such as `SETSOCKOPT` since 6.7)
    public static let uringCommand = Opcode(rawValue: 46)
    /// `IORING_OP_SEND_ZC` (Linux 6.0, the release of multishot recv)
    public static let sendZeroCopy = Opcode(rawValue: 47)

    /// The name of a known opcode, or its number.
    public var description: String {
        let names: [UInt8: String] = [
            0: "NOP", 11: "TIMEOUT", 13: "ACCEPT", 14: "ASYNC_CANCEL", 15: "LINK_TIMEOUT", 16: "CONNECT",
            19: "CLOSE", 26: "SEND", 27: "RECV", 31: "PROVIDE_BUFFERS", 34: "SHUTDOWN", 40: "MSG_RING",
            45: "SOCKET", 46: "URING_CMD", 47: "SEND_ZC",
        ]
        return names[rawValue] ?? "opcode \(rawValue)"
    }
}
