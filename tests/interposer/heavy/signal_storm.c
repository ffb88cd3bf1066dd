/* stat/statx on /data while an interval timer (argv[2] microseconds) fires SIGALRM
   with a handler (findings 01: this livelocked at 20 us under both engines) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/stat.h>

static volatile long alarms;
static void onalrm(int s) { (void)s; alarms++; }

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int n = atoi(argv[1]), us = atoi(argv[2]);
    struct sigaction sa = {0};
    sa.sa_handler = onalrm;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = {{0, us}, {0, us}};
    setitimer(ITIMER_REAL, &it, 0);
    long ok = 0, err = 0;
    struct stat s;
    struct statx sx;
    for (int i = 0; i < n; i++) {
        int r = (i & 1) ? stat(argv[3], &s)
                        : (int)syscall(SYS_statx, AT_FDCWD, argv[3], 0, 0x7ff, &sx);
        if (r == 0) ok++; else err++;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, 0);
    printf("ok=%ld err=%ld alarms=%ld\n", ok, err, alarms);
    return 0;
}
