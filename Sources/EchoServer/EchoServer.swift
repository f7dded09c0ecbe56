// EchoServer: the completion loop and the echo server built on it (in progress).
@_exported import SocketPool
