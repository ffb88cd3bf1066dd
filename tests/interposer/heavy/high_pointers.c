/* argv[1]: a directory holding a symlink "link". Syscalls given pointers no user address can be (>= 2**47, >= 2**63): the kernel
 * answers EFAULT. Prints one line per call: name and errno name (or "ok"). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *what, long r) {
    printf("%s %s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    char link[4096];
    snprintf(link, sizeof link, "%s/link", argv[1]);
    const unsigned long ptrs[] = {0xffffffffff600000UL, 0x8000000000000000UL,
                                  0x0000800000000000UL};
    for (int round = 0; round < 200; round++) {  /* a guest that repeats it */
        for (unsigned i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
            char *p = (char *)ptrs[i];
            struct stat st;
            long r1 = syscall(SYS_openat, AT_FDCWD, p, O_RDONLY);
            long r2 = syscall(SYS_newfstatat, AT_FDCWD, p, &st, 0);
            long r3 = syscall(SYS_newfstatat, AT_FDCWD, argv[1], p, 0);
            long r4 = syscall(SYS_readlinkat, AT_FDCWD, link, p, 64);
            if (round == 0) {
                show("openat", r1);
                show("stat-path", r2);
                show("stat-buf", r3);
                show("readlink-buf", r4);
            }
        }
    }
    return 0;
}
