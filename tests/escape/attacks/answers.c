/* Races and faults of the supervisor's answers (either channel).
 *
 * usage: answers MODE ARGS...
 *   scratch LINK DIR : the supervisor writes a call's result into guest memory;
 *                      aim readlink(LINK) and, from DIR (a /data directory),
 *                      getcwd at the supervisor's read-only scratch area
 *                      (vm.mmap_min_addr). A store the guest could not make
 *                      itself puts guest-chosen bytes where checked copies of
 *                      paths wait for the kernel. Escape = the bytes landed.
 *                      Natively nothing is mapped there: EFAULT.
 *   rofault PATH     : stat/statx/readlink into a page the guest mapped
 *                      read-only must fail with EFAULT, as natively.
 *   signal PATH N    : SIGALRM every 50 us (a handler without SA_RESTART)
 *                      while stat(PATH) runs N times: never EINTR (a stat
 *                      on a local file system is not interruptible).
 *   dead PATH N      : N times, a child with 4 threads stat()ing PATH is
 *                      SIGKILLed mid-call; between rounds this process
 *                      checks its own answers (a buffer a failed stat must
 *                      leave alone, PATH's size). A notification of a dead
 *                      thread answered into a live one's memory shows here.
 * Exit 66 when the forbidden thing happened, 0 when it did not, 2 on usage
 * errors, 3 when the test could not run (setup failed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long low_addr(void) {
    unsigned long low = 65536;
    FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
    if (f) {
        if (fscanf(f, "%lu", &low) != 1) low = 65536;
        fclose(f);
    }
    if (low < 4096) low = 4096;
    return (low + 4095) & ~4095UL;
}

static int scratch(const char *link, const char *dir) {
    char *base = (char *)low_addr();
    char target[256];
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 3;
    target[n] = 0;
    int escaped = 0;
    /* raw syscalls: libc's wrappers may check the buffer themselves */
    long r = syscall(SYS_readlink, link, base + 64, 128);
    if (r > 0) {
        /* the page is readable to the guest when it exists: look what landed */
        if (!memcmp(base + 64, target, (size_t)n)) escaped = 1;
        fprintf(stderr, "readlink into %p: %ld\n", (void *)(base + 64), r);
    }
    if (chdir(dir) != 0) return 3;
    r = syscall(SYS_getcwd, base + 1024, 256);
    if (r > 0) {
        if (!memcmp(base + 1024, dir, strlen(dir))) escaped = 1;
        fprintf(stderr, "getcwd into %p: %ld\n", (void *)(base + 1024), r);
    }
    return escaped ? 66 : 0;
}

static int rofault(const char *path) {
    char *page = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return 3;
    int wrong = 0;
    long r = syscall(SYS_newfstatat, AT_FDCWD, path, page, 0);
    if (!(r == -1 && errno == EFAULT)) { fprintf(stderr, "newfstatat: %ld\n", r); wrong = 1; }
    r = syscall(SYS_statx, AT_FDCWD, path, 0, 0x7ff, page);
    if (!(r == -1 && errno == EFAULT)) { fprintf(stderr, "statx: %ld\n", r); wrong = 1; }
    r = syscall(SYS_readlink, "/proc/self/exe", page, 64);
    if (!(r == -1 && errno == EFAULT)) { fprintf(stderr, "readlink: %ld\n", r); wrong = 1; }
    for (int i = 0; i < 8192; i++)
        if (page[i]) { fprintf(stderr, "read-only page written\n"); return 66; }
    return wrong ? 66 : 0;
}

static volatile long alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }

static int interrupted(const char *path, int n) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 50}, {0, 50}};
    setitimer(ITIMER_REAL, &it, NULL);
    long eintr = 0, other = 0;
    struct stat st;
    for (int i = 0; i < n; i++)
        if (stat(path, &st) != 0) {
            if (errno == EINTR) eintr++;
            else other++;
        }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    fprintf(stderr, "EINTR %ld, other errors %ld, %ld signals\n", eintr, other, alarms);
    if (alarms == 0) return 3;
    return eintr || other ? 66 : 0;
}

static const char *dead_path;
static void *stat_forever(void *arg) {
    (void)arg;
    struct stat st;
    for (;;) stat(dead_path, &st);
    return NULL;
}

static int dead(const char *path, int n) {
    struct stat want;
    if (stat(path, &want) != 0) return 3;
    dead_path = path;
    for (int round = 0; round < n; round++) {
        pid_t pid = fork();
        if (pid < 0) return 3;
        if (pid == 0) {
            pthread_t t;
            for (int i = 0; i < 3; i++) pthread_create(&t, NULL, stat_forever, NULL);
            stat_forever(NULL);
            _exit(0);
        }
        struct timespec ts = {0, (long)(rand() % 2000) * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        if (waitpid(pid, &status, 0) != pid) return 3;
        struct stat mine;
        memset(&mine, 0xAA, sizeof mine);
        if (stat("/nonexistent-synthfs-race/x", &mine) == 0 || errno != ENOENT) return 66;
        for (size_t i = 0; i < sizeof mine; i++)
            if (((unsigned char *)&mine)[i] != 0xAA) return 66;
        if (stat(path, &mine) != 0 || mine.st_size != want.st_size || mine.st_ino != want.st_ino)
            return 66;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int rc = 2;
    if (!strcmp(argv[1], "scratch") && argc == 4) rc = scratch(argv[2], argv[3]);
    else if (!strcmp(argv[1], "rofault")) rc = rofault(argv[2]);
    else if (!strcmp(argv[1], "signal") && argc == 4) rc = interrupted(argv[2], atoi(argv[3]));
    else if (!strcmp(argv[1], "dead") && argc == 4) rc = dead(argv[2], atoi(argv[3]));
    printf("%s: %s\n", argv[1], rc == 66 ? "ESCAPED" : rc == 0 ? "held" : "did not run");
    return rc;
}
