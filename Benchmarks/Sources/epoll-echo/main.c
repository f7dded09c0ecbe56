// epoll-echo: the classic baseline. One thread, level-triggered epoll, non-blocking sockets, a
// buffer per connection; partial writes continue where they stopped (EPOLLOUT), reading pauses
// while a connection has unsent bytes. Flags in the style of uring-echo: --host, --port.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER_SIZE 4096

struct conn {
    int fd;
    size_t start, end;  // unsent bytes in buf[start..<end]
    char buf[BUFFER_SIZE];
};

static int listen_on(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "epoll-echo: bad host %s\n", host); exit(64); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 1024) < 0) { perror("listen"); exit(1); }
    return fd;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 7777;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) i++;  // accepted for flag parity; one thread
        else { fprintf(stderr, "epoll-echo: unknown flag %s\nusage: epoll-echo [--host H] [--port P]\n", argv[i]); return 64; }
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int lfd = listen_on(host, port);
    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    printf("listening on %s:%d\n", host, ntohs(bound.sin_port));
    fflush(stdout);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &sfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev);
    struct epoll_event events[256];
    unsigned long long accepted = 0;
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &sfd) {
                printf("stopped; accepted %llu\n", accepted);
                return 0;
            }
            if (p == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    struct conn *c = malloc(sizeof *c);
                    c->fd = fd;
                    c->start = c->end = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    accepted++;
                }
                continue;
            }
            struct conn *c = p;
            if (c->end > c->start) {  // writable again: flush what is pending
                ssize_t w = send(c->fd, c->buf + c->start, c->end - c->start, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { close_conn(ep, c); continue; }
                if (w > 0) c->start += (size_t)w;
                if (c->start < c->end) continue;
                c->start = c->end = 0;
                struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
            ssize_t r = recv(c->fd, c->buf, BUFFER_SIZE, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) { close_conn(ep, c); continue; }
            if (r < 0) continue;
            ssize_t w = send(c->fd, c->buf, (size_t)r, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) { close_conn(ep, c); continue; }
            if (w < 0) w = 0;
            if (w < r) {  // short write: wait for EPOLLOUT, stop reading meanwhile
                c->start = (size_t)w;
                c->end = (size_t)r;
                struct epoll_event cev = {.events = EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
}
