/* TOCTOU: a second thread flips what a path names, between an allowed file
 * and a forbidden one, while the main thread calls a path syscall in a loop.
 *
 * usage: toctou OP ALLOWED FORBIDDEN MARKER N
 *   open | openat : the path buffer itself is flipped in memory; escape = an
 *                   open whose content starts with MARKER (only FORBIDDEN has it)
 *   stat          : the buffer is flipped; escape = a stat that succeeds with
 *                   st_size == MARKER (a number: the forbidden file's size)
 *   unlink        : recreate ALLOWED, unlink(buffer); escape = FORBIDDEN is gone
 *                   afterwards (the test also checks it from the host side)
 *   rename        : recreate ALLOWED, rename(buffer, ALLOWED.moved); escape =
 *                   ALLOWED.moved then holds MARKER
 *   symlink       : the buffer is fixed (DIR/l in a fresh /tmp dir) and the
 *                   thread atomically renames symlinks to ALLOWED / FORBIDDEN
 *                   over it; escape as for open
 * Exit 66 if any attempt escaped; 0 if none did and the race really ran both
 * ways (some attempts opened ALLOWED, some were refused); 3 if it did not
 * (the run proves nothing); 2 on usage errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char buf[4096] __attribute__((aligned(64)));
static char allowed[4096], forbidden[4096];
static size_t len_a, len_f;
static atomic_int stop;
static char linkdir[256];

static void *swapper(void *arg) {
    (void)arg;
    char a[4200], f[4200], l[4200];
    snprintf(a, sizeof a, "%s/a", linkdir);
    snprintf(f, sizeof f, "%s/f", linkdir);
    snprintf(l, sizeof l, "%s/l", linkdir);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        unlink(f);
        if (symlink(forbidden, f) == 0) rename(f, l);
        unlink(a);
        if (symlink(allowed, a) == 0) rename(a, l);
    }
    return NULL;
}

static void *flipper(void *arg) {
    (void)arg;
    size_t n = len_a > len_f ? len_a : len_f;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        memcpy(buf, forbidden, n + 1);
        for (volatile int i = 0; i < 50; i++) {}
        memcpy(buf, allowed, n + 1);
        for (volatile int i = 0; i < 50; i++) {}
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: toctou OP ALLOWED FORBIDDEN MARKER N\n"); return 2; }
    const char *op = argv[1], *marker = argv[4];
    long n = atol(argv[5]);
    len_a = strlen(argv[2]); len_f = strlen(argv[3]);
    if (len_a >= sizeof allowed || len_f >= sizeof forbidden) return 2;
    /* pad both to the same length with NULs so a half-copied buffer is one or the other's prefix */
    memcpy(allowed, argv[2], len_a); memcpy(forbidden, argv[3], len_f);
    memcpy(buf, allowed, len_a + 1);
    long want_size = atol(marker);
    int swap = !strcmp(op, "symlink");
    if (swap) {
        char tmpl[] = "/tmp/toctou-XXXXXX";
        if (!mkdtemp(tmpl)) { perror("mkdtemp"); return 2; }
        snprintf(linkdir, sizeof linkdir, "%s", tmpl);
        snprintf(buf, sizeof buf, "%s/l", linkdir);
        if (symlink(allowed, buf)) { perror("symlink"); return 2; }
    }
    pthread_t t;
    if (pthread_create(&t, NULL, swap ? swapper : flipper, NULL)) return 2;
    long ok = 0, refused = 0, escaped = 0, other = 0;
    int dfd = open("/", O_RDONLY | O_DIRECTORY);
    char moved[4200];
    snprintf(moved, sizeof moved, "%s.moved", allowed);
    for (long i = 0; i < n; i++) {
        if (!strcmp(op, "unlink") || !strcmp(op, "rename")) {
            /* the allowed name is recreated each time; the buffer flips under the call */
            int c = open(allowed, O_CREAT | O_WRONLY | O_TRUNC, 0644);
            if (c >= 0) { if (write(c, "ok\n", 3) != 3) other++; close(c); }
            int r = !strcmp(op, "unlink") ? unlink(buf) : rename(buf, moved);
            if (r != 0) { refused++; continue; }
            ok++;
            if (!strcmp(op, "rename")) {
                char got[256] = {0};
                int fd = open(moved, O_RDONLY);
                if (fd >= 0) {
                    if (read(fd, got, sizeof got - 1) > 0 && !strncmp(got, marker, strlen(marker))) {
                        escaped++;
                        ok--;
                    }
                    close(fd);
                }
            }
            continue;
        }
        if (!strcmp(op, "stat")) {
            struct stat st;
            if (stat(buf, &st) == 0) {
                if (st.st_size == want_size) escaped++; else ok++;
            } else refused++;
            continue;
        }
        int fd = !strcmp(op, "openat") ? openat(dfd, buf, O_RDONLY) : open(buf, O_RDONLY);
        if (fd < 0) { refused++; continue; }
        char got[256] = {0};
        ssize_t r = read(fd, got, sizeof got - 1);
        close(fd);
        if (r > 0 && !strncmp(got, marker, strlen(marker))) escaped++;
        else if (r >= 0) ok++;
        else other++;
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    if (!strcmp(op, "unlink") && access(forbidden, F_OK) != 0 && errno == ENOENT) escaped++;
    printf("%s attempts=%ld ok=%ld refused=%ld escaped=%ld other=%ld\n", op, n, ok, refused, escaped, other);
    if (escaped) return 66;
    if (!ok || !refused) return 3;
    return 0;
}
