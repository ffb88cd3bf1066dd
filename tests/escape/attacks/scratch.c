/* Attacks on the interposer's scratch page (the read-only page at the lowest
 * mappable address where checked path copies live, DESIGN.md mechanism 4).
 *
 * usage: scratch MODE    (mprotect | munmap | madvise | procmem | mremap | mmap_fixed)
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: scratch MODE\n"); return 2; }
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
        page = mmap((void *)min, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (page == MAP_FAILED) { perror("control mmap"); return 2; }
        memcpy(page, "/data/checked-path", 19);
        mprotect(page, pg, PROT_READ);
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
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("%s: %s (%s)\n", mode, ok ? "ESCAPED" : "refused", ok ? "success" : strerror(errno));
    return ok ? 66 : 0;
}
