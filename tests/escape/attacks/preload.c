/* A library that runs before main: loaded by LD_PRELOAD, LD_AUDIT or ld.so --preload.
 * Its constructor prints the file named by $BORROW_TARGET and exits, under the
 * identity of whatever program it was loaded into (tests/escape/attacks/borrow.py). */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void borrow(void)
{
    const char *target = getenv("BORROW_TARGET");
    char buf[4096];
    ssize_t n;
    int fd;

    if (target == NULL)
        return;
    fd = open(target, O_RDONLY);
    if (fd < 0)
        _exit(4);
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write(1, buf, (size_t)n) != n)
            _exit(5);
    _exit(0);
}

/* LD_AUDIT wants this; the constructor has run by the time it is called. */
unsigned int la_version(unsigned int version) { return version; }
