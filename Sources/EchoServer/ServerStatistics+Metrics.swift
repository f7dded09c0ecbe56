extension ServerStatistics {
    /// One of the server's counters or gauges: its metric name, the help text shown beside it,
    /// and the field that keeps it.
    public struct Metric<Value: Sendable>: Sendable {
        /// The metric name (`uring_echo_…`; counters end in `_total`).
        public let name: String
        /// What it counts, one sentence (Prometheus's `# HELP`).
        public let help: String
        /// The field of ``ServerStatistics`` that holds it.
        public let field: any WritableKeyPath<ServerStatistics, Value> & Sendable

        init(_ name: String, _ field: any WritableKeyPath<ServerStatistics, Value> & Sendable, _ help: String) {
            self.name = name
            self.field = field
            self.help = help
        }
    }

    /// Every counter, once: what rings sum, what the server reports to swift-metrics
    /// (labelled `ring="N"`) and what the docs list all come from here.
    public static let counters: [Metric<UInt64>] = [
        .init("uring_echo_accepted_total", \.accepted, "Connections accepted on the main listener, including those rejected at the connection cap."),
        .init("uring_echo_closed_total", \.closed, "Connections of the main listener whose close completed."),
        .init("uring_echo_rejected_total", \.rejected, "Connections closed at once because the connection cap was reached."),
        .init("uring_echo_metrics_connections_total", \.endpointConnections, "Connections accepted on the server's other listeners (the metrics endpoint)."),
        .init("uring_echo_idle_closed_total", \.idleClosed, "Connections closed by the idle timeout."),
        .init("uring_echo_stalled_closed_total", \.stalledClosed, "Connections closed because their queued output made no progress for the idle timeout."),
        .init("uring_echo_errors_total", \.errors, "Connections that ended with an error (reset, broken pipe, ...)."),
        .init("uring_echo_bytes_in_total", \.bytesIn, "Bytes received on the main listener's connections."),
        .init("uring_echo_bytes_out_total", \.bytesOut, "Bytes sent on the main listener's connections."),
        .init("uring_echo_completions_total", \.completions, "Completions harvested from the ring."),
        .init("uring_echo_stale_completions_total", \.staleCompletions, "Completions dropped because the connection or context they named had been recycled."),
        .init("uring_echo_submits_total", \.submits, "Submit calls (at most one io_uring_enter each)."),
        .init("uring_echo_accept_errors_total", \.acceptErrors, "Accepts that failed with an unexpected error."),
        .init("uring_echo_accept_pauses_total", \.acceptPauses, "Times accepting paused for want of descriptors or slots, one per episode."),
        .init("uring_echo_accept_rearms_total", \.acceptRearms, "Accepts armed again after one ended."),
        .init("uring_echo_receive_rearms_total", \.receiveRearms, "Receives armed again after one ended."),
        .init("uring_echo_receive_bundles_total", \.receiveBundles, "Receive completions that carried more than one provided buffer."),
        .init("uring_echo_buffer_shortages_total", \.bufferShortages, "Receives that ended because the provided-buffer ring was empty (ENOBUFS)."),
        .init("uring_echo_receive_pauses_total", \.receivePauses, "Times a connection's receiving paused at its bound of unsent bytes or held buffers."),
        .init("uring_echo_completion_queue_overflows_total", \.completionQueueOverflows, "Harvests that found the completion queue had overflowed."),
        .init("uring_echo_writes_refused_total", \.writesRefused, "Writes refused at a connection's output bound or for want of outbound buffers."),
        .init("uring_echo_posted_total", \.posted, "Messages posted to other rings."),
        .init("uring_echo_posts_refused_total", \.postsRefused, "Posts refused because the mailbox was full."),
        .init("uring_echo_delivered_total", \.delivered, "Messages delivered from other rings."),
        .init("uring_echo_message_ring_failures_total", \.messageRingFailures, "MSG_RING requests that failed (an eventfd woke the target instead)."),
        .init("uring_echo_feature_fallbacks_total", \.featureFallbacks, "Kernel features given up at run time because the kernel refused them."),
        .init("uring_echo_enter_retries_total", \.enterRetries, "io_uring_enter calls that failed with EAGAIN or EBUSY and were retried."),
        .init("uring_echo_dropped_completions_total", \.droppedCompletions, "Times io_uring_enter reported dropped completions (EBADR)."),
        .init("uring_echo_connects_total", \.connects, "Outbound connections that connected."),
        .init("uring_echo_connects_refused_total", \.connectsRefused, "Outbound connects refused by the peer."),
        .init("uring_echo_connects_timed_out_total", \.connectsTimedOut, "Outbound connects that timed out."),
        .init("uring_echo_connects_unreachable_total", \.connectsUnreachable, "Outbound connects with no route to the peer."),
        .init("uring_echo_connects_capped_total", \.connectsCapped, "Outbound connects refused at the ring's outbound cap."),
        .init("uring_echo_connects_cancelled_total", \.connectsCancelled, "Outbound connects cancelled by a stop or a close."),
        .init("uring_echo_connects_failed_total", \.connectsFailed, "Outbound connects that failed otherwise."),
        .init("uring_echo_outbound_closed_total", \.outboundClosed, "Outbound connections whose close completed."),
    ]

    /// Every gauge, once (see ``counters``).
    public static let gauges: [Metric<Int>] = [
        .init("uring_echo_active_connections", \.active, "Connections of the main listener open now."),
        .init("uring_echo_buffers_held", \.buffersHeld, "Provided buffers (or slices) taken by receives and not yet given back."),
        .init("uring_echo_outbound_buffers_in_use", \.outboundBuffersInUse, "Outbound buffers holding written bytes not yet sent."),
        .init("uring_echo_outbound_connections", \.outboundActive, "Outbound connections open or connecting now."),
    ]
}
