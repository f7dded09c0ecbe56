// without-io-uring PROGRAM [ARGS...]: runs PROGRAM under a seccomp filter that refuses
// io_uring_setup, io_uring_enter and io_uring_register with EPERM, as Docker's default profile
// (Engine 25 and later), containerd 2.0's and so Kubernetes' RuntimeDefault do. Everything else
// is allowed. For tests and CI: how this project behaves where io_uring is refused.
//
// Exit status: PROGRAM's (it replaces this process), 64 for a usage error, 71 when the filter
// cannot be installed (the kernel lacks seccomp filters).
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// The io_uring system calls have the same numbers on every architecture (425, 426, 427).
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

#if defined(__x86_64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_HERE AUDIT_ARCH_AARCH64
#else
#error "without-io-uring: add this architecture's AUDIT_ARCH"
#endif

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: without-io-uring PROGRAM [ARGS...]\n"
                        "runs PROGRAM with io_uring_setup, io_uring_enter and io_uring_register refused (EPERM)\n");
        return 64;
    }
    struct sock_filter filter[] = {
        // Another architecture's calls (a 32-bit one under a 64-bit kernel) are allowed as they are.
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_HERE, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
        fprintf(stderr, "without-io-uring: cannot install the seccomp filter: %s\n", strerror(errno));
        return 71;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "without-io-uring: cannot run %s: %s\n", argv[1], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}
