import CURing
import Glibc

/// Per-SQE memory that a request points into until it is submitted: the kernel copies a
/// timeout's timespec and a connect's address when it consumes the SQE, so one scratch area per
/// SQE index suffices and nothing is allocated per request.
@usableFromInline
struct SubmissionScratch {
    @usableFromInline var timespec = __kernel_timespec()
    @usableFromInline var address = sockaddr_storage()
    @usableFromInline init() {}
}
