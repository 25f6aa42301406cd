/*
 * probe: the tight loops of scripts/bench, in C so that the interpreter's own cost does
 * not dilute the ratios between filesystems.
 *
 *   probe lstat BASE LIST ROUNDS   lstat every NUL-separated path of LIST (relative to BASE)
 *                                  ROUNDS times; prints "NS FOUND MISSING"
 *   probe list DIR                 read every entry of DIR (getdents); prints "NS ENTRIES"
 *
 * Only the loop is timed (CLOCK_MONOTONIC); reading LIST happens before. Any error other
 * than ENOENT is fatal, so a broken mount cannot pass for a fast one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    if (!buf) {
        fputs("probe: out of memory\n", stderr);
        exit(2);
    }
    fclose(f);
    *len = n;
    return buf;
}

static int do_lstat(const char *base, const char *list, long rounds)
{
    int dirfd = open(base, O_PATH | O_DIRECTORY);
    if (dirfd < 0) {
        perror(base);
        return 2;
    }
    size_t len;
    char *buf = slurp(list, &len);
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\0')
            count++;
    char **paths = malloc((count + 1) * sizeof *paths);
    size_t k = 0;
    for (size_t i = 0, start = 0; i < len; i++)
        if (buf[i] == '\0') {
            paths[k++] = buf + start;
            start = i + 1;
        }

    long found = 0, missing = 0;
    struct stat st;
    long long t0 = now_ns();
    for (long r = 0; r < rounds; r++)
        for (size_t i = 0; i < count; i++) {
            if (fstatat(dirfd, paths[i], &st, AT_SYMLINK_NOFOLLOW) == 0)
                found++;
            else if (errno == ENOENT)
                missing++;
            else {
                fprintf(stderr, "probe: lstat %s: %s\n", paths[i], strerror(errno));
                return 1;
            }
        }
    long long t1 = now_ns();
    printf("%lld %ld %ld\n", t1 - t0, found, missing);
    return 0;
}

static int do_list(const char *path)
{
    long long t0 = now_ns();
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        return 1;
    }
    long entries = 0;
    errno = 0;
    while (readdir(d))
        entries++;
    if (errno) {
        perror(path);
        return 1;
    }
    closedir(d);
    long long t1 = now_ns();
    printf("%lld %ld\n", t1 - t0, entries);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "lstat") == 0)
        return do_lstat(argv[2], argv[3], atol(argv[4]));
    if (argc == 3 && strcmp(argv[1], "list") == 0)
        return do_list(argv[2]);
    fputs("usage: probe lstat BASE LIST ROUNDS | probe list DIR\n", stderr);
    return 2;
}
