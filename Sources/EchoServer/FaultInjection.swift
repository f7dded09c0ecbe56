/// Faults a test asks a server to meet, each as a kernel or a race would present it. Set before
/// ``Server/start()`` with ``Server/inject(_:)``.
package struct FaultInjection: Sendable {
    /// Every ring's registration of an incremental buffer ring carries a flag no kernel knows, so
    /// it is refused with `EINVAL`, as a kernel older than 6.12 refuses `IOU_PBUF_RING_INC`.
    package var refuseIncrementalBufferRing = false
    /// Every `MSG_RING` carries a flag no kernel knows, so it fails with `EINVAL`, as on a kernel
    /// that refuses it at run time.
    package var refuseMessageRing = false
    /// Runs inside ``Server/start()`` once the start is claimed and before the rings exist (a stop
    /// that races the start).
    package var whileStarting: (@Sendable () -> Void)? = nil

    package init() {}
}
