// The one C header the Swift side sees.
//
// Include order matters: <linux/io_uring.h> (also pulled in by other Swift
// modules through Glibc/swift-system) and liburing's bundled copy of it share
// an include guard. Bringing in <sys/socket.h> and the system's uapi header
// first makes every module agree on one definition of the io_uring structs.
#ifndef CURING_SHIM_H
#define CURING_SHIM_H

#include <sys/socket.h>
#include <linux/io_uring.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <errno.h>
#include <string.h>
#include <stddef.h>
#include <stdint.h>

// Small helpers for what Swift cannot reach cleanly (anonymous unions,
// flexible array members) or what liburing 2.3 gets wrong. They are the only
// places outside liburing that write SQE fields.

/// Sets the SQE flags (IOSQE_*), keeping those already set.
static inline void curing_sqe_add_flags(struct io_uring_sqe *sqe, unsigned char flags) {
    sqe->flags |= flags;
}

/// Selects a provided-buffer group for a recv (IOSQE_BUFFER_SELECT + buf_group).
static inline void curing_sqe_set_buffer_group(struct io_uring_sqe *sqe, unsigned short group) {
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
}

/// Targets a fixed-file slot. liburing 2.3 stores `index + 1` and wraps
/// IORING_FILE_INDEX_ALLOC to 0 (a plain accept); this writes the field
/// itself: `IORING_FILE_INDEX_ALLOC` asks the kernel to choose the slot.
static inline void curing_sqe_set_file_index(struct io_uring_sqe *sqe, unsigned int index) {
    sqe->file_index = (index == IORING_FILE_INDEX_ALLOC) ? IORING_FILE_INDEX_ALLOC : index + 1;
}

/// Adds to the SQE's ioprio field (multishot accept / recv flags live there).
static inline void curing_sqe_add_ioprio(struct io_uring_sqe *sqe, unsigned short bits) {
    sqe->ioprio |= bits;
}

/* A multishot receive's total byte limit (Linux 6.17: the request ends, without
 * IORING_CQE_F_MORE, once it has received this many bytes). The kernel reads it from
 * sqe->optlen, which shares its place with file_index, the only name liburing 2.3 has for it;
 * older kernels refuse a receive with it set (EINVAL). */
static inline void curing_sqe_set_receive_limit(struct io_uring_sqe *sqe, unsigned int bytes) {
    sqe->file_index = bytes;
}

static inline unsigned int curing_sqe_index(struct io_uring *ring, struct io_uring_sqe *sqe) {
    return (unsigned int)(sqe - ring->sq.sqes);
}

static inline unsigned int curing_sq_entries(struct io_uring *ring) { return ring->sq.ring_entries; }
static inline unsigned int curing_cq_entries(struct io_uring *ring) { return ring->cq.ring_entries; }
static inline unsigned int curing_ring_fd(struct io_uring *ring) { return (unsigned int)ring->ring_fd; }

/// Reads the kernel's CQ overflow counter (completions the kernel had to hold back).
static inline unsigned int curing_cq_overflow(struct io_uring *ring) {
    return io_uring_smp_load_acquire(ring->cq.koverflow);
}

/// Reads the SQ ring's flags; IORING_SQ_CQ_OVERFLOW says completions wait in the kernel's
/// overflow list because the CQ was full (with IORING_FEAT_NODROP none is lost).
static inline unsigned int curing_sq_flags(struct io_uring *ring) {
    return IO_URING_READ_ONCE(*ring->sq.kflags);
}

// Kernel ABI values newer than this liburing's headers. Prefixed, so a newer header that
// defines (or enumerates) the originals cannot clash.

/// `IOU_PBUF_RING_INC` (Linux 6.12): buffers of the ring are consumed incrementally.
#define CURING_IOU_PBUF_RING_INC 2u
/// `IORING_CQE_F_BUF_MORE` (Linux 6.12): the kernel keeps the completion's buffer at the ring head
/// and will put more data into it.
#define CURING_IORING_CQE_F_BUF_MORE (1u << 4)

/// Sets `io_uring_buf_reg.flags`: the 16 bits after `bgid`, named `pad` in headers older than the
/// flags (this liburing's), `flags` in newer ones; written by offset so both compile.
static inline void curing_buf_reg_set_flags(struct io_uring_buf_reg *reg, unsigned short flags) {
    memcpy((char *)reg + offsetof(struct io_uring_buf_reg, bgid) + sizeof(reg->bgid), &flags, sizeof(flags));
}

static inline void curing_buf_ring_init(void *br) { io_uring_buf_ring_init((struct io_uring_buf_ring *)br); }

static inline void curing_buf_ring_add(void *br, void *addr, unsigned int len, unsigned short bid,
                                       int mask, int offset) {
    io_uring_buf_ring_add((struct io_uring_buf_ring *)br, addr, len, bid, mask, offset);
}

/// The ring's tail as the application last published it (where the next added buffer goes).
static inline unsigned short curing_buf_ring_tail(void *br) {
    return ((struct io_uring_buf_ring *)br)->tail;
}

/// The buffer id in ring entry `index` (masked).
static inline unsigned short curing_buf_ring_bid(void *br, unsigned int index, unsigned int mask) {
    return ((struct io_uring_buf_ring *)br)->bufs[index & mask].bid;
}

// Newer than liburing 2.3's headers.
/// sqe->ioprio for recv/send: take several provided buffers per completion (Linux 6.10).
#define CURING_RECVSEND_BUNDLE (1U << 4)
/// io_uring_params.features: the kernel supports IORING_RECVSEND_BUNDLE.
#define CURING_FEAT_RECVSEND_BUNDLE (1U << 14)

/* A socket command (`IORING_OP_URING_CMD` on a socket): `SOCKET_URING_OP_SETSOCKOPT`, Linux 6.7.
 * It sets an option on a socket that may exist only as a registered-file slot, which no
 * setsockopt(2) can reach. The kernel reads `level` and `optname` where `addr` is, `optlen` where
 * `file_index` is, and the pointer to the value where `addr3` is; newer headers name those fields,
 * this liburing's do not, so they are written by offset. The value is read when the request runs,
 * which in a linked chain is later than the submit: it must stay valid (the constants below). */
#define CURING_SOCKET_URING_OP_SETSOCKOPT 3u

static inline void curing_prep_setsockopt(struct io_uring_sqe *sqe, int fd, int level, int optname,
                                          const void *optval, unsigned int optlen) {
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, NULL, 0, 0);
    unsigned int cmd_op = CURING_SOCKET_URING_OP_SETSOCKOPT;
    memcpy((char *)sqe + offsetof(struct io_uring_sqe, off), &cmd_op, sizeof(cmd_op));
    unsigned int level_name[2] = {(unsigned int)level, (unsigned int)optname};
    memcpy((char *)sqe + offsetof(struct io_uring_sqe, addr), level_name, sizeof(level_name));
    memcpy((char *)sqe + offsetof(struct io_uring_sqe, file_index), &optlen, sizeof(optlen));
    unsigned long long value = (unsigned long long)(uintptr_t)optval;
    memcpy((char *)sqe + offsetof(struct io_uring_sqe, addr3), &value, sizeof(value));
}

/// Option values a linked `curing_prep_setsockopt` may point at: they outlive every request.
static const int curing_option_on = 1;
static const struct linger curing_linger_reset = {1, 0};

static inline const void *curing_option_on_pointer(void) { return &curing_option_on; }
static inline const void *curing_linger_reset_pointer(void) { return &curing_linger_reset; }

static inline void curing_buf_ring_advance(void *br, int count) {
    io_uring_buf_ring_advance((struct io_uring_buf_ring *)br, count);
}


#endif
