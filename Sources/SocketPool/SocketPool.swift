// SocketPool: reusable descriptors, sessions, request contexts and buffers (in progress).
@_exported import URing
