/* stat/statx on /data while an interval timer (argv[2] microseconds) fires SIGALRM */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <linux/stat.h>
static long alarms;
static void onalrm(int s) { (void)s; alarms++; }
int main(int argc, char **argv) {
  int n = atoi(argv[1]), us = atoi(argv[2]);
  struct sigaction sa = {0}; sa.sa_handler = onalrm; sigaction(SIGALRM, &sa, 0);
  struct itimerval it = {{0, us}, {0, us}}; setitimer(ITIMER_REAL, &it, 0);
  long ok = 0, err = 0; struct stat s; struct statx sx;
  for (int i = 0; i < n; i++) {
    int r = (i & 1) ? stat("/data/a.txt", &s) : (int)syscall(SYS_statx, AT_FDCWD, "/data/sub", 0, 0x7ff, &sx);
    if (r == 0) ok++; else err++;
  }
  printf("ok=%ld err=%ld alarms=%ld\n", ok, err, alarms);
  return 0;
}
