#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    char p1[256], p2[256], p3[256];
    snprintf(p1, sizeof p1, "%s/n1", argv[1]); snprintf(p2, sizeof p2, "%s/n2", argv[1]);
    long r = syscall(SYS_mknod, p1, (long)(0x100000000L | S_IFREG | 0644), 0L);
    printf("mknod high bits: %ld %s\n", r, r ? strerror(errno) : "");
    r = syscall(SYS_mknodat, -100, p2, (long)(0x700000000L | S_IFREG | 0600), 0L);
    printf("mknodat high bits: %ld %s\n", r, r ? strerror(errno) : "");
    int64_t tv[4] = {INT64_MAX / 2, 0, INT64_MAX / 2, 0};
    r = syscall(SYS_utime, p1, tv);
    printf("utime far future: %ld %s\n", r, r ? strerror(errno) : "");
    r = syscall(SYS_utimes, p1, tv);
    printf("utimes far future: %ld %s\n", r, r ? strerror(errno) : "");
    r = syscall(SYS_utimensat, -100, p1, tv, 0);
    printf("utimensat far future: %ld %s\n", r, r ? strerror(errno) : "");
    struct stat st; stat(p1, &st); printf("mtime sec %ld\n", (long)st.st_mtime);
    return 0;
}
