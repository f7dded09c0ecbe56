import Glibc

// Placeholder until the EchoServer lands: say so and fail, never pretend to serve.
let message = "uring-echo: the echo server is not built yet (EchoServer module pending); nothing is listening.\n"
_ = message.withCString { write(2, $0, strlen($0)) }
exit(2)
