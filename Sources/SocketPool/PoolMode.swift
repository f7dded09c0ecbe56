import URing

/// Whether sessions and their buffers are made once and reused, or made per connection.
public enum PoolMode: String, Sendable, Hashable, CaseIterable {
    /// Preallocated sessions and buffers, fixed slots: nothing is allocated per connection.
    case pooled
    /// A session and a buffer allocated per connection and freed at close; plain descriptors.
    case unpooled
}
