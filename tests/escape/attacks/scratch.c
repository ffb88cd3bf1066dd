/* Attacks on the interposer's scratch page (the read-only page at the lowest
 * mappable address where checked path copies live, DESIGN.md mechanism 4).
 *
 * usage: scratch MODE [FORBIDDEN MARKER]
 *   mprotect | munmap | madvise | procmem | mremap | mmap_fixed : the call itself
 *   prctl_brk        : prctl(PR_SET_MM, PR_SET_MM_MAP) puts the heap's break around
 *                      the page (no capability needed), brk() shrinks it (unmapping
 *                      the page) and grows it back read-write
 *   prctl_brk_nobody : the same after dropping to uid/gid 65534 (an unprivileged guest)
 *   prctl_brk_race   : prctl_brk, then a thread rewrites the checked path copy in a
 *                      scratch slot while the main thread opens an allowed file of
 *                      its own: exit 66 when a read returns MARKER (FORBIDDEN's content)
 *   uffd             : userfaultfd registers the page (its faults, the kernel's
 *                      reads of a checked path included, answered by the guest)
 *
 * Under synthfs the scratch page is the mapping below 64 KiB. Natively there
 * is none, so the program maps a read-only page of its own at the lowest
 * address (the control: there every attack must succeed, which proves the
 * program detects success). Exit 66 = the page was made writable, removed,
 * zeroed, moved, replaced or written; 0 = refused; 2 = setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static unsigned long lowest_mapping(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    unsigned long lo = 0;
    if (fscanf(f, "%lx-", &lo) != 1) lo = 0;
    fclose(f);
    return lo;
}

#define AREA 0x78000 /* the size of synthfs's scratch area (40 slots of 3 pages) */
#define SLOT 0x3000

static unsigned long lowest_end(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    unsigned long lo = 0, hi = 0;
    if (fscanf(f, "%lx-%lx", &lo, &hi) != 2) hi = 0;
    fclose(f);
    return hi;
}

struct mm_map {
    uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack,
        arg_start, arg_end, env_start, env_end, auxv;
    uint32_t auxv_size, exe_fd;
};

/* Move the heap's break into the area: prctl(PR_SET_MM_MAP) wants every address at
 * or above the LSM's mmap_min_addr (64 KiB) and start_brk above end_data; then brk()
 * shrinks the heap over the rest of the area (unmapping it) and grows it back
 * read-write. Returns the first address that is now the guest's (0: refused). */
#define LOW 0x10000UL
static unsigned long brk_over(char *page, unsigned long end) {
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[4096];
    if (!f || !fgets(buf, sizeof buf, f)) return 0;
    fclose(f);
    unsigned long v[64] = {0};
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    int i = 3;
    for (char *tok = strtok(p + 2, " "); tok && i < 64; tok = strtok(NULL, " ")) v[i++] = strtoul(tok, NULL, 10);
    unsigned long low = (unsigned long)page > LOW ? (unsigned long)page : LOW;
    struct mm_map m = {0};
    m.start_code = v[26]; m.end_code = v[27]; m.start_stack = v[28];
    m.start_data = m.end_data = low;
    m.start_brk = low + 1; m.brk = end;
    m.arg_start = v[48]; m.arg_end = v[49]; m.env_start = v[50]; m.env_end = v[51];
    m.exe_fd = (uint32_t)-1;
    if (prctl(PR_SET_MM, PR_SET_MM_MAP, &m, sizeof m, 0) != 0) return 0;
    syscall(SYS_brk, low + 1);
    if ((unsigned long)syscall(SYS_brk, end) != end) { errno = ENOMEM; return 0; }
    return (low + 1 + 4095) & ~4095UL;
}

static char allowed[4096], forbidden[4096];
static volatile char *slot1; /* the slot our opens get */
static atomic_int stop;

static void *rewriter(void *arg) {
    (void)arg;
    size_t n = strlen(forbidden) + 1;
    while (!atomic_load_explicit(&stop, memory_order_relaxed))
        memcpy((char *)slot1, forbidden, n);
    return NULL;
}

static void *holder(void *arg) {  /* blocks in open(): its call keeps scratch slot 0 */
    open((const char *)arg, O_RDONLY);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) { fprintf(stderr, "usage: scratch MODE [FORBIDDEN MARKER]\n"); return 2; }
    const char *mode = argv[1];
    long pg = sysconf(_SC_PAGESIZE);
    unsigned long lo = lowest_mapping();
    char *page;
    const char *whose;
    if (lo && lo < 0x10000) {
        page = (char *)lo;
        whose = "synthfs scratch page";
    } else {
        FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
        unsigned long min = 4096;
        if (f) { if (fscanf(f, "%lu", &min) != 1) min = 4096; fclose(f); }
        if (min < (unsigned long)pg) min = pg;
        page = mmap((void *)min, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (page == MAP_FAILED) { perror("control mmap"); return 2; }
        memcpy(page, "/data/checked-path", 19);
        mprotect(page, AREA, PROT_READ);
        whose = "own control page (no scratch page found)";
    }
    printf("target: %s at %p\n", whose, (void *)page);
    int ok = 0;
    if (!strcmp(mode, "mprotect")) {
        ok = mprotect(page, pg, PROT_READ | PROT_WRITE) == 0;
        if (ok) page[0] = 'X';
    } else if (!strcmp(mode, "munmap")) {
        ok = munmap(page, pg) == 0;
    } else if (!strcmp(mode, "madvise")) {
        ok = madvise(page, pg, MADV_DONTNEED) == 0;
    } else if (!strcmp(mode, "procmem")) {
        int fd = open("/proc/self/mem", O_RDWR);
        ok = fd >= 0 && pwrite(fd, "X", 1, (off_t)(unsigned long)page) == 1;
    } else if (!strcmp(mode, "mremap")) {
        void *to = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ok = to != MAP_FAILED && mremap(page, pg, pg, MREMAP_MAYMOVE | MREMAP_FIXED, to) == to;
    } else if (!strcmp(mode, "mmap_fixed")) {
        ok = mmap(page, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == page;
        if (ok) page[0] = 'X';
    } else if (!strcmp(mode, "prctl_brk") || !strcmp(mode, "prctl_brk_nobody")) {
        if (!strcmp(mode, "prctl_brk_nobody") && (setgroups(0, NULL) || setgid(65534) || setuid(65534))) {
            perror("drop to nobody"); return 2;
        }
        char *mine = (char *)brk_over(page, lowest_end());
        ok = mine != NULL;
        if (ok) { *mine = 'X'; ok = *mine == 'X'; }
    } else if (!strcmp(mode, "uffd")) {
        int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
        struct uffdio_api api = {.api = UFFD_API};
        struct uffdio_register reg = {.range = {(unsigned long)page, (unsigned long)pg},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING};
        ok = uffd >= 0 && ioctl(uffd, UFFDIO_API, &api) == 0 && ioctl(uffd, UFFDIO_REGISTER, &reg) == 0;
    } else if (!strcmp(mode, "prctl_brk_race") && argc == 4) {
        /* the first slots (below LOW) stay read-only: threads blocked in open() of a
         * FIFO hold them, so our opens get the first slot past LOW */
        int first = (int)((LOW + 4096 - (unsigned long)page + SLOT - 1) / SLOT);
        char fifo[] = "/tmp/scratch-fifo-XXXXXX";
        if (!mkdtemp(fifo)) { perror("mkdtemp"); return 2; }
        strcat(fifo, "/f");
        if (mkfifo(fifo, 0600)) { perror("mkfifo"); return 2; }
        pthread_t h, r;
        for (int k = 0; k < first; k++) { pthread_create(&h, NULL, holder, fifo); usleep(20000); }
        usleep(200000);
        if (!brk_over(page, lowest_end())) {
            printf("%s: refused (%s)\n", mode, strerror(errno));
            return 0;
        }
        /* an allowed file of ours whose checked path is longer than FORBIDDEN */
        snprintf(forbidden, sizeof forbidden, "%s", argv[2]);
        char *cwd = getcwd(NULL, 0);
        snprintf(allowed, sizeof allowed, "%s/allowed-%0*d", cwd, (int)(strlen(forbidden) + 16), 0);
        int afd = open(allowed, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (afd < 0 || write(afd, "allowed\n", 8) != 8) { perror("allowed"); return 2; }
        close(afd);
        slot1 = page + first * SLOT;
        pthread_create(&r, NULL, rewriter, NULL);
        int native = whose[0] == 'o';
        for (int i = 0; i < 20000; i++) {
            /* natively there is no supervisor: play its part (copy, then open the copy) */
            int fd;
            if (native) {
                /* the supervisor's write, then its ptrace round trip (tens of microseconds)
                 * before the kernel reads the copy: wait that long, or until rewritten */
                memcpy((char *)slot1, allowed, strlen(allowed) + 1);
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                do clock_gettime(CLOCK_MONOTONIC, &t1);
                while (slot1[0] == allowed[0] && !strcmp((char *)slot1, allowed) &&
                       (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 200000);
                fd = open((char *)slot1, O_RDONLY);
            }
            else fd = open(allowed, O_RDONLY);
            if (fd < 0) continue;
            char got[256] = {0};
            ssize_t n = read(fd, got, sizeof got - 1);
            close(fd);
            if (n > 0 && !strncmp(got, argv[3], strlen(argv[3]))) {
                printf("%s: ESCAPED after %d opens: read %s's content\n", mode, i + 1, forbidden);
                fflush(stdout);
                _exit(66);
            }
        }
        atomic_store(&stop, 1);
        printf("%s: the page was writable, no forbidden read in 20000 opens\n", mode);
        fflush(stdout);
        _exit(3);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("%s: %s (%s)\n", mode, ok ? "ESCAPED" : "refused", ok ? "success" : strerror(errno));
    return ok ? 66 : 0;
}
