/* ABI tricks that must not reach a forbidden file or bypass the filter.
 *
 * usage: abi MODE TARGET MARKER
 *   int80   open(TARGET) through the 32-bit int 0x80 entry from a 64-bit process
 *   x32     openat(AT_FDCWD, TARGET) with the x32 syscall bit set
 *   io_uring  io_uring_setup (must be ENOSYS: io_uring bypasses seccomp)
 *   clone3  clone3 (must be ENOSYS: its flags hide behind a pointer)
 * Exit 66 = escaped (read MARKER from TARGET, or the forbidden syscall worked),
 * 0 = refused as required, 3 = refused the wrong way (e.g. errno not ENOSYS).
 * Being killed by the sandbox (SIGSYS/SIGKILL) is judged by the test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int judge_fd(long fd, const char *how, const char *marker) {
    if (fd < 0) { printf("%s: refused (%s)\n", how, strerror((int)-fd)); return 0; }
    char got[256] = {0};
    ssize_t r = read((int)fd, got, sizeof got - 1);
    if (r > 0 && !strncmp(got, marker, strlen(marker))) { printf("%s: ESCAPED read %.40s\n", how, got); return 66; }
    printf("%s: opened something else (%zd bytes)\n", how, r);
    return 3;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: abi MODE TARGET MARKER\n"); return 2; }
    const char *mode = argv[1], *target = argv[2], *marker = argv[3];
    if (!strcmp(mode, "int80")) {
        /* the path must sit below 4 GiB for the 32-bit ABI */
        char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
        if (low == MAP_FAILED) { perror("mmap"); return 2; }
        strncpy(low, target, 4095);
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(5 /* i386 open */), "b"((uint32_t)(uintptr_t)low), "c"(O_RDONLY), "d"(0) : "memory");
        return judge_fd(ret, "int 0x80 open", marker);
    }
    if (!strcmp(mode, "x32")) {
        long ret;
        __asm__ volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 257 /* x32 openat */), "D"((long)AT_FDCWD), "S"(target), "d"((long)O_RDONLY) : "rcx", "r11", "memory");
        return judge_fd(ret, "x32 openat", marker);
    }
    if (!strcmp(mode, "io_uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        long fd = syscall(__NR_io_uring_setup, 4, &p);
        if (fd >= 0) { printf("io_uring_setup: ESCAPED (fd %ld)\n", fd); return 66; }
        int e = errno;
        long r2 = syscall(__NR_io_uring_enter, 9999, 0, 0, 0, NULL, 0);
        int e2 = errno;
        long r3 = syscall(__NR_io_uring_register, 9999, 0, NULL, 0);
        int e3 = errno;
        printf("io_uring_setup: %s; io_uring_enter: %ld %s; io_uring_register: %ld %s\n",
               strerror(e), r2, strerror(e2), r3, strerror(e3));
        return (e == ENOSYS && e2 == ENOSYS && e3 == ENOSYS) ? 0 : 3;
    }
    if (!strcmp(mode, "clone3")) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.exit_signal = SIGCHLD;
        long pid = syscall(__NR_clone3, &ca, sizeof ca);
        if (pid == 0) _exit(0);
        if (pid > 0) { waitpid((pid_t)pid, NULL, 0); printf("clone3: ESCAPED (child %ld)\n", pid); return 66; }
        printf("clone3: %s\n", strerror(errno));
        return errno == ENOSYS ? 0 : 3;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
