/* Fairness of the supervisor: NTHREADS threads (the main one included) call
 * stat(PATH) in a loop for SECONDS of wall time, then print each one's count on
 * one line ("counts: N N N ...").  Usage: stat_threads PATH SECONDS NTHREADS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#define MAX 64
static const char *path;
static struct timespec deadline;
static pthread_barrier_t start;
static long counts[MAX];

static int past(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline.tv_sec ||
           (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

static void *loop(void *arg) {
    long i = (long)arg, n = 0;
    struct stat st;
    pthread_barrier_wait(&start);
    while (!past()) {
        stat(path, &st);
        n++;
    }
    counts[i] = n;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PATH SECONDS NTHREADS\n", argv[0]);
        return 2;
    }
    path = argv[1];
    double seconds = atof(argv[2]);
    int n = atoi(argv[3]);
    if (n < 1 || n > MAX) return 2;
    pthread_t tids[MAX];
    pthread_barrier_init(&start, NULL, n);
    /* The clock starts once every thread exists: creating them is not measured. */
    for (long i = 1; i < n; i++) pthread_create(&tids[i], NULL, loop, (void *)i);
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - (time_t)seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
    loop((void *)0);
    for (long i = 1; i < n; i++) pthread_join(tids[i], NULL);
    printf("counts:");
    for (int i = 0; i < n; i++) printf(" %ld", counts[i]);
    printf("\n");
    return 0;
}
