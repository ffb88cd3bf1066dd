#define _GNU_SOURCE
#include <sched.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <string.h>
static volatile int step = 0;
static const char *t2dir;
static void *t2(void *a) {
    if (unshare(CLONE_FS)) perror("unshare");
    if (chdir(t2dir)) perror("t2 chdir");
    step = 1;
    while (step != 2) usleep(1000);
    return 0;
}
static void tryopen(const char *p) {
    char buf[64] = {0}; char cwd[256] = {0};
    getcwd(cwd, sizeof cwd);
    int fd = open(p, O_RDONLY);
    if (fd < 0) { printf("T1 cwd=%s open %s: %s\n", cwd, p, strerror(errno)); return; }
    read(fd, buf, 63); printf("T1 cwd=%s open %s: OK '%s'\n", cwd, p, buf);
}
int main(int argc, char **argv) {
    // argv[1]: T1's dir, argv[2]: T2's dir, argv[3..]: relative paths for T1
    if (chdir(argv[1])) perror("t1 chdir");
    t2dir = argv[2];
    pthread_t th; pthread_create(&th, 0, t2, 0);
    while (step != 1) usleep(1000);
    for (int i = 3; i < argc; i++) tryopen(argv[i]);
    step = 2; pthread_join(th, 0);
    return 0;
}
