/* Process and thread storms: every new task must be under the sandbox from
 * its first instruction. Each task tries to open TARGET (forbidden) at once.
 *
 * usage: storm MODE TARGET MARKER N     MODE: fork | vfork | thread
 *   fork   N children, each opens TARGET as its first act, reports via exit code
 *   vfork  N vfork+execve of this program in "child" mode (the exec'd child opens)
 *   thread N threads opening TARGET concurrently
 * Exit 66 if any task read MARKER from TARGET; 0 if all were refused.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *target, *marker;

static int try_open(void) {
    int fd = open(target, O_RDONLY);
    if (fd < 0) return 0;
    char got[256] = {0};
    ssize_t r = read(fd, got, sizeof got - 1);
    close(fd);
    return r > 0 && !strncmp(got, marker, strlen(marker));
}

static void *thread_main(void *arg) { return (void *)(long)try_open(); (void)arg; }

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "child")) {
        target = argv[2]; marker = argv[3];
        return try_open() ? 66 : 0;
    }
    if (argc != 5) { fprintf(stderr, "usage: storm MODE TARGET MARKER N\n"); return 2; }
    const char *mode = argv[1];
    target = argv[2]; marker = argv[3];
    int n = atoi(argv[4]), escaped = 0, done = 0, odd = 0;
    if (!strcmp(mode, "thread")) {
        pthread_t *t = calloc(n, sizeof *t);
        for (int i = 0; i < n; i++) if (!pthread_create(&t[i], NULL, thread_main, NULL)) done++;
        for (int i = 0; i < n; i++) { void *r; if (t[i] && !pthread_join(t[i], &r)) escaped += (long)r; }
    } else {
        for (int i = 0; i < n; i++) {
            pid_t pid;
            if (!strcmp(mode, "vfork")) {
                pid = vfork();
                if (pid == 0) {
                    char *args[] = {"/proc/self/exe", "child", (char *)target, (char *)marker, NULL};
                    execv("/proc/self/exe", args);
                    _exit(3);
                }
            } else {
                pid = fork();
                if (pid == 0) _exit(try_open() ? 66 : 0);
            }
            if (pid < 0) continue;
            int st;
            /* only a child that really tried counts (exit 0 refused, 66 escaped) */
            if (waitpid(pid, &st, 0) != pid) continue;
            if (WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 66)) done++;
            else if (odd++ == 0)
                printf("first odd child (#%d): %s %d\n", i, WIFEXITED(st) ? "exit" : "signal",
                       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            if (WIFEXITED(st) && WEXITSTATUS(st) == 66) escaped++;
        }
    }
    printf("%s: tasks=%d escaped=%d\n", mode, done, escaped);
    if (escaped) return 66;
    return done == n ? 0 : 3;
}
