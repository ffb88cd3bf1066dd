/* exit_group(N) while threads are still creating threads (issue #20, item 1).
 *
 * main starts a few threads; each creates threads in a loop (each of those does
 * the same), and main calls exit_group(argv[1]) almost at once. Natively the
 * process ends with status N; a tracer must resume the threads whose creation
 * it never heard of (their parent died in clone) from their exit stops.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Bounded: at most LIMIT threads are ever created (no thread bomb). */
#define LIMIT 400
static int created;

static void *spawner(void *arg) {
    (void)arg;
    while (__atomic_add_fetch(&created, 1, __ATOMIC_RELAXED) < LIMIT) {
        pthread_t t;
        if (pthread_create(&t, NULL, spawner, NULL) == 0)
            pthread_detach(t);
    }
    pause();
    return NULL;
}

int main(int argc, char **argv) {
    int status = argc > 1 ? atoi(argv[1]) : 7;
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        pthread_create(&t, NULL, spawner, NULL);
    }
    usleep(2000);
    syscall(SYS_exit_group, status);
    return 99;
}
