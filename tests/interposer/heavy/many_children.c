/* N live processes at once (issue #20, item 4): fork N children that each wait
 * on a pipe, then let them all go and reap them. Exit 0 when all N were forked
 * and reaped, 1 otherwise (a fork failed: the message says which).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1500;
    int gate[2];
    if (pipe(gate) != 0) {
        perror("pipe");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fork %d: ", i);
            perror("");
            return 1;
        }
        if (pid == 0) {
            char c;
            close(gate[1]);
            ssize_t r = read(gate[0], &c, 1); /* until the parent closes the gate */
            _exit(r == 0 ? 0 : 2);
        }
    }
    close(gate[1]);
    int reaped = 0, bad = 0, status;
    while (wait(&status) > 0) {
        reaped++;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad++;
    }
    printf("%d children, %d reaped, %d failed\n", n, reaped, bad);
    return reaped == n && bad == 0 ? 0 : 1;
}
