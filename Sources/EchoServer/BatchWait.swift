import SocketPool
import URing

/// How many completions a loop turn waits for, and for how long at most (see
/// ``ServerConfiguration/batchWait``).
public struct BatchWait: Sendable, Hashable {
    /// Completions to wait for, 1...4096.
    public var completions: Int
    /// The longest wait, 1 µs...100 ms.
    public var timeout: Duration

    /// Wait for `completions` completions or `timeout`.
    /// - Parameters:
    ///   - completions: completions to wait for.
    ///   - timeout: the longest wait.
    public init(completions: Int, timeout: Duration) {
        self.completions = completions
        self.timeout = timeout
    }
}
