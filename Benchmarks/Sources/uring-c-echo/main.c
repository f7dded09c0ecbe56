// uring-c-echo: the io_uring peer written by hand in C, in the same shape as uring-echo's pooled
// mode, so every benchmark has a "best C" io_uring figure beside the epoll one.
//
// One thread, one ring: IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (falling back to
// COOP_TASKRUN, then to no flags), the ring fd registered, one provided-buffer ring (4096 buffers
// of 4096 bytes by default), a multishot accept (into the fixed-file table unless
// --no-fixed-files), a multishot recv with buffer select per connection, and the received buffers
// echoed in place. Each connection has at most one send in flight, so its bytes stay in order: a
// buffer that arrives while one is in flight waits in the connection's queue, and the next send
// takes up to --gather queued buffers at once (a plain send for one, sendmsg for several). A short
// send continues from where it stopped. A buffer goes back to the buffer ring when all of it has
// been sent. EOF or an error closes the connection once nothing is in flight for it; a recv that
// ran out of buffers (ENOBUFS) is re-armed when buffers have come back.
//
// Flags as epoll-echo: --host H, --port P (0 picks one; "listening on HOST:PORT" is printed).
// SIGINT/SIGTERM end it cleanly. Loopback benchmarking tool, not a hardened server.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CLOSE, OP_SHUTDOWN, OP_SIGNAL, OP_PAUSE };

#define MAX_GATHER 64
#define BUFFER_GROUP 0

struct conn {
    int32_t head, tail;    // queued buffer ids, linked through next_buf; -1 when empty
    uint32_t head_offset;  // bytes of the head buffer already sent
    uint8_t open;          // slot in use
    uint8_t recv_armed;    // a multishot recv is posted
    uint8_t sending;       // a send is in flight
    uint8_t closing;       // EOF or error seen: close when nothing is in flight
    uint8_t want_recv;     // recv ended with ENOBUFS: re-arm when buffers are back
    uint8_t shut;          // a shutdown was posted to end the recv
    uint8_t drain;         // closing after EOF: send what is queued first
};

static struct io_uring ring;
static struct conn *conns;
static struct msghdr *headers;  // per connection, for gathering sends
static struct iovec *iovecs;    // per connection, `gather` each
static unsigned max_conns;
static int fixed_files = 1;
static unsigned gather = 16;

static struct io_uring_buf_ring *buf_ring;
static char *buf_base;
static unsigned buf_count = 4096, buf_size = 4096, buf_mask;
static int32_t *next_buf;
static uint32_t *buf_len;
static int buf_returns;  // added to the buffer ring since its tail last moved
static unsigned bufs_out;  // buffers the kernel has handed us and we still hold

static int32_t *rearm;  // connections waiting for buffers (ENOBUFS)
static uint8_t *listed;  // per slot: in `rearm` (outlives the connection, so no slot is listed twice)
static unsigned rearm_count;

static int listen_fd, signal_fd;
static int accept_armed;
static unsigned long long accepted, out_of_buffers;
static struct signalfd_siginfo siginfo;
static struct __kernel_timespec pause_ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};

static inline uint64_t ud(enum op op, uint32_t index) { return (uint64_t)op << 32 | index; }

static struct io_uring_sqe *get_sqe(void) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    while (!sqe) {
        int r = io_uring_submit(&ring);
        if (r < 0 && r != -EAGAIN && r != -EBUSY) {
            fprintf(stderr, "uring-c-echo: io_uring_submit: %s\n", strerror(-r));
            exit(1);
        }
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static inline void use_file(struct io_uring_sqe *sqe) {
    if (fixed_files) sqe->flags |= IOSQE_FIXED_FILE;
}

static void post_accept(void) {
    struct io_uring_sqe *sqe = get_sqe();
    if (fixed_files) {  // the kernel picks a free slot (and refuses SOCK_CLOEXEC there)
        io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, 0);
        sqe->file_index = IORING_FILE_INDEX_ALLOC;
    } else {
        io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
    }
    io_uring_sqe_set_data64(sqe, ud(OP_ACCEPT, 0));
    accept_armed = 1;
}

static void post_recv(uint32_t i) {
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, (int)i, NULL, 0, 0);
    use_file(sqe);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    io_uring_sqe_set_data64(sqe, ud(OP_RECV, i));
    conns[i].recv_armed = 1;
    conns[i].want_recv = 0;
}

static inline void return_buffer(uint32_t bid) {
    io_uring_buf_ring_add(buf_ring, buf_base + (size_t)bid * buf_size, buf_size, (unsigned short)bid, buf_mask,
                          buf_returns++);
    bufs_out--;
}

static void flush_buffers(void) {
    if (buf_returns) {
        io_uring_buf_ring_advance(buf_ring, buf_returns);
        buf_returns = 0;
    }
}

// Sends what is queued: the head buffer from head_offset, and up to `gather` buffers in all.
static void post_send(uint32_t i) {
    struct conn *c = &conns[i];
    int32_t b = c->head;
    struct io_uring_sqe *sqe = get_sqe();
    if (next_buf[b] < 0 || gather == 1) {
        io_uring_prep_send(sqe, (int)i, buf_base + (size_t)b * buf_size + c->head_offset, buf_len[b] - c->head_offset,
                           MSG_NOSIGNAL);
    } else {
        struct iovec *iov = iovecs + (size_t)i * gather;
        unsigned n = 0;
        for (; b >= 0 && n < gather; b = next_buf[b], n++) {
            uint32_t off = n == 0 ? c->head_offset : 0;
            iov[n].iov_base = buf_base + (size_t)b * buf_size + off;
            iov[n].iov_len = buf_len[b] - off;
        }
        struct msghdr *m = &headers[i];
        memset(m, 0, sizeof *m);
        m->msg_iov = iov;
        m->msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, (int)i, m, MSG_NOSIGNAL);
    }
    use_file(sqe);
    io_uring_sqe_set_data64(sqe, ud(OP_SEND, i));
    c->sending = 1;
}

static void drop_queue(struct conn *c) {
    while (c->head >= 0) {
        int32_t b = c->head;
        c->head = next_buf[b];
        return_buffer((uint32_t)b);
    }
    c->tail = -1;
    c->head_offset = 0;
}

// Closes connection i when nothing is in flight for it any more (after EOF, once what is queued
// has been sent); until then ends its recv.
static void settle_closing(uint32_t i) {
    struct conn *c = &conns[i];
    if (!c->closing) return;
    if (!c->sending) {
        if (c->drain && c->head >= 0)
            post_send(i);
        else
            drop_queue(c);
    }
    if (c->recv_armed) {
        if (!c->shut) {  // the recv would wait for bytes that may never come: end it
            struct io_uring_sqe *sqe = get_sqe();
            io_uring_prep_shutdown(sqe, (int)i, SHUT_RDWR);
            use_file(sqe);
            io_uring_sqe_set_data64(sqe, ud(OP_SHUTDOWN, i));
            c->shut = 1;
        }
        return;
    }
    if (c->sending) return;
    struct io_uring_sqe *sqe = get_sqe();
    if (fixed_files)
        io_uring_prep_close_direct(sqe, i);
    else
        io_uring_prep_close(sqe, (int)i);
    io_uring_sqe_set_data64(sqe, ud(OP_CLOSE, i));
    memset(c, 0, sizeof *c);
    c->head = c->tail = -1;
}

static void on_accept(struct io_uring_cqe *cqe) {
    if (!(cqe->flags & IORING_CQE_F_MORE)) accept_armed = 0;
    if (cqe->res < 0) {
        if (!accept_armed) {
            // Out of descriptors or slots (EMFILE, ENFILE, ENOMEM): wait a little, then accept again.
            struct io_uring_sqe *sqe = get_sqe();
            io_uring_prep_timeout(sqe, &pause_ts, 0, 0);
            io_uring_sqe_set_data64(sqe, ud(OP_PAUSE, 0));
            accept_armed = -1;
        }
        return;
    }
    uint32_t i = (uint32_t)cqe->res;
    if (i >= max_conns) {  // cannot happen with the table sized to the limit; be safe
        if (fixed_files) {
            struct io_uring_sqe *sqe = get_sqe();
            io_uring_prep_close_direct(sqe, i);
            io_uring_sqe_set_data64(sqe, ud(OP_CLOSE, i));
        } else {
            close((int)i);
        }
    } else {
        struct conn *c = &conns[i];
        memset(c, 0, sizeof *c);
        c->head = c->tail = -1;
        c->open = 1;
        accepted++;
        post_recv(i);
    }
    if (!accept_armed) post_accept();
}

static void on_recv(uint32_t i, struct io_uring_cqe *cqe) {
    struct conn *c = &conns[i];
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more) c->recv_armed = 0;
    if (cqe->res > 0) {
        uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        bufs_out++;
        if (c->closing) {
            return_buffer(bid);
        } else {
            buf_len[bid] = (uint32_t)cqe->res;
            next_buf[bid] = -1;
            if (c->tail >= 0)
                next_buf[c->tail] = (int32_t)bid;
            else
                c->head = (int32_t)bid;
            c->tail = (int32_t)bid;
            if (!c->sending) post_send(i);
            if (!more) post_recv(i);
            return;
        }
    } else if (cqe->res == -ENOBUFS && !c->closing) {
        out_of_buffers++;
        if (!more) {
            c->want_recv = 1;
            if (!listed[i]) {
                listed[i] = 1;
                rearm[rearm_count++] = (int32_t)i;
            }
        }
        return;
    } else if (cqe->res <= 0) {
        if (cqe->flags & IORING_CQE_F_BUFFER) {  // not expected without data; keep the count right
            bufs_out++;
            return_buffer(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        }
        c->closing = 1;
        c->drain = cqe->res == 0;  // EOF: the peer may still read what it sent
    }
    settle_closing(i);
}

static void on_send(uint32_t i, struct io_uring_cqe *cqe) {
    struct conn *c = &conns[i];
    c->sending = 0;
    if (cqe->res < 0) {
        c->closing = 1;
        c->drain = 0;
        settle_closing(i);
        return;
    }
    uint32_t done = (uint32_t)cqe->res;
    while (done > 0 && c->head >= 0) {
        int32_t b = c->head;
        uint32_t left = buf_len[b] - c->head_offset;
        if (done < left) {  // short: the rest goes in the next send
            c->head_offset += done;
            break;
        }
        done -= left;
        c->head = next_buf[b];
        c->head_offset = 0;
        return_buffer((uint32_t)b);
    }
    if (c->head < 0) c->tail = -1;
    if (c->closing)
        settle_closing(i);
    else if (c->head >= 0)
        post_send(i);
}

// Re-arms the recvs that ran out of buffers, oldest first, one per buffer now free (re-arming
// them all at once would have most fail again at once).
static void rearm_waiting(void) {
    unsigned kept = 0, room = buf_count - bufs_out;
    for (unsigned k = 0; k < rearm_count; k++) {
        uint32_t i = (uint32_t)rearm[k];
        struct conn *c = &conns[i];
        int waiting = c->open && c->want_recv && !c->closing && !c->recv_armed;
        if (waiting && room == 0) {
            rearm[kept++] = (int32_t)i;
            continue;
        }
        listed[i] = 0;
        if (waiting) {
            post_recv(i);
            room--;
        }
    }
    rearm_count = kept;
}

static int listen_on(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // inherited by accepted sockets
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "uring-c-echo: bad host %s\n", host); exit(64); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    return fd;
}

static void setup_ring(unsigned entries) {
    static const struct { unsigned flags; const char *name; } chain[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN"},
        {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
        {0, "none"},
    };
    for (unsigned k = 0; k < sizeof chain / sizeof chain[0]; k++) {
        struct io_uring_params p = {0};
        p.flags = chain[k].flags | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 8;
        int r = io_uring_queue_init_params(entries, &ring, &p);
        if (r == 0) {
            fprintf(stderr, "uring-c-echo: ring flags %s, %u/%u entries, ring fd %s, %s files, %u x %u B buffers\n",
                    chain[k].name, p.sq_entries, p.cq_entries,
                    io_uring_register_ring_fd(&ring) == 1 ? "registered" : "not registered",
                    fixed_files ? "fixed" : "plain", buf_count, buf_size);
            return;
        }
        fprintf(stderr, "uring-c-echo: ring flags %s refused: %s\n", chain[k].name, strerror(-r));
        if (r != -EINVAL) break;
    }
    exit(1);
}

static void setup_buffers(void) {
    size_t ring_bytes = (size_t)buf_count * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); exit(1); }
    buf_ring = mem;
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)(uintptr_t)mem, .ring_entries = buf_count,
                                   .bgid = BUFFER_GROUP};
    int r = io_uring_register_buf_ring(&ring, &reg, 0);
    if (r < 0) { fprintf(stderr, "uring-c-echo: io_uring_register_buf_ring: %s\n", strerror(-r)); exit(1); }
    // Pages are touched only as buffers are used.
    buf_base = mmap(NULL, (size_t)buf_count * buf_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf_base == MAP_FAILED) { perror("mmap"); exit(1); }
    io_uring_buf_ring_init(buf_ring);
    buf_mask = (unsigned)io_uring_buf_ring_mask(buf_count);
    for (unsigned b = 0; b < buf_count; b++)
        io_uring_buf_ring_add(buf_ring, buf_base + (size_t)b * buf_size, buf_size, (unsigned short)b, buf_mask, (int)b);
    io_uring_buf_ring_advance(buf_ring, (int)buf_count);
    next_buf = malloc(buf_count * sizeof *next_buf);
    buf_len = malloc(buf_count * sizeof *buf_len);
    if (!next_buf || !buf_len) { perror("malloc"); exit(1); }
}

static unsigned parse_count(const char *flag, const char *v, unsigned lo, unsigned hi) {
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (*end || x < lo || x > hi) {
        fprintf(stderr, "uring-c-echo: %s wants a number in %u...%u\n", flag, lo, hi);
        exit(64);
    }
    return (unsigned)x;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 7777;
    unsigned entries = 4096, want_conns = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = (int)parse_count("--port", argv[++i], 0, 65535);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) i++;  // accepted for flag parity; one thread
        else if (!strcmp(argv[i], "--buffers") && i + 1 < argc) buf_count = parse_count("--buffers", argv[++i], 2, 32768);
        else if (!strcmp(argv[i], "--buffer-size") && i + 1 < argc) buf_size = parse_count("--buffer-size", argv[++i], 64, 1 << 20);
        else if (!strcmp(argv[i], "--gather") && i + 1 < argc) gather = parse_count("--gather", argv[++i], 1, MAX_GATHER);
        else if (!strcmp(argv[i], "--ring-entries") && i + 1 < argc) entries = parse_count("--ring-entries", argv[++i], 64, 8192);
        else if (!strcmp(argv[i], "--max-connections") && i + 1 < argc) want_conns = parse_count("--max-connections", argv[++i], 1, 1 << 20);
        else if (!strcmp(argv[i], "--no-fixed-files")) fixed_files = 0;
        else {
            fprintf(stderr, "uring-c-echo: unknown flag %s\nusage: uring-c-echo [--host H] [--port P] [--buffers N] "
                    "[--buffer-size B] [--gather N] [--ring-entries N] [--max-connections N] [--no-fixed-files]\n", argv[i]);
            return 64;
        }
    }
    if (buf_count & (buf_count - 1)) { fprintf(stderr, "uring-c-echo: --buffers must be a power of two\n"); return 64; }
    if (entries & (entries - 1)) { fprintf(stderr, "uring-c-echo: --ring-entries must be a power of two\n"); return 64; }

    // Room for 10,000+ connections: the soft descriptor limit up to the hard one.
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    max_conns = rl.rlim_cur > (1u << 20) ? (1u << 20) : (unsigned)rl.rlim_cur;
    if (want_conns && want_conns < max_conns) max_conns = want_conns;

    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    listen_fd = listen_on(host, port);

    setup_ring(entries);
    if (fixed_files) {
        int r = io_uring_register_files_sparse(&ring, max_conns);
        if (r < 0) {
            fprintf(stderr, "uring-c-echo: fixed-file table of %u refused (%s); using plain descriptors\n", max_conns,
                    strerror(-r));
            fixed_files = 0;
        }
    }
    setup_buffers();
    conns = calloc(max_conns, sizeof *conns);
    headers = calloc(max_conns, sizeof *headers);
    iovecs = calloc((size_t)max_conns * gather, sizeof *iovecs);
    rearm = malloc(max_conns * sizeof *rearm);
    listed = calloc(max_conns, 1);
    if (!conns || !headers || !iovecs || !rearm || !listed) { perror("calloc"); return 1; }
    for (unsigned i = 0; i < max_conns; i++) conns[i].head = conns[i].tail = -1;

    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    getsockname(listen_fd, (struct sockaddr *)&bound, &blen);
    printf("listening on %s:%d\n", host, ntohs(bound.sin_port));
    fflush(stdout);

    post_accept();
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_read(sqe, signal_fd, &siginfo, sizeof siginfo, 0);
    io_uring_sqe_set_data64(sqe, ud(OP_SIGNAL, 0));

    for (;;) {
        int r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
            fprintf(stderr, "uring-c-echo: io_uring_submit_and_wait: %s\n", strerror(-r));
            return 1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t data = io_uring_cqe_get_data64(cqe);
            uint32_t i = (uint32_t)data;
            switch ((enum op)(data >> 32)) {
            case OP_ACCEPT: on_accept(cqe); break;
            case OP_RECV: on_recv(i, cqe); break;
            case OP_SEND: on_send(i, cqe); break;
            case OP_PAUSE:
                if (accept_armed < 0) post_accept();
                break;
            case OP_SIGNAL:
                printf("stopped; accepted %llu; recv out of buffers %llu times\n", accepted, out_of_buffers);
                fflush(stdout);
                io_uring_queue_exit(&ring);
                return 0;
            case OP_CLOSE:
            case OP_SHUTDOWN:
                break;
            }
        }
        io_uring_cq_advance(&ring, seen);
        flush_buffers();
        if (rearm_count) rearm_waiting();
    }
}
