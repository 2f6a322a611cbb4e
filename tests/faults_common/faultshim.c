/*
 * faultshim.c - a failing and slow disk under a real twinfs process, for the
 * disk-fault tests (tests/faults_disk.rs). Built by the test with
 * `cc -shared -fPIC` and loaded with LD_PRELOAD into `twinfs mount` or
 * `twinfs peer` only.
 *
 * Why a preloaded shim: the machines these tests run on have no
 * device-mapper (no dm-flakey or dm-delay), and a fault-injecting FUSE
 * layer under the peer's directory would add a third FUSE daemon and its
 * CPU to a two-core machine. The daemons do all their file I/O through
 * glibc's pread64/pwrite64/pwritev2/read/write/fsync/fdatasync/
 * sync_file_range/ftruncate64 (checked with `nm -D`; no mmap of data, no
 * io_uring), so wrapping those calls reaches every byte, per file, with
 * exact counts, deterministically.
 *
 * Control: TWINFS_FAULT_CTL names a file holding `struct ctl` below, which
 * the shim maps shared; the test writes rules into it while the daemon runs
 * and reads back how often each rule matched and fired. A rule matches a
 * call when the call's class is in `ops` and the path of the descriptor
 * (readlink of /proc/self/fd/N) contains `path`. The first matching rule
 * that still has faults to give (`hits > skip`, `fired < count` or count
 * < 0) acts; rules after it are not looked at for that call.
 *
 * The layout is mirrored by `FaultCtl` in tests/faults_common/mod.rs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CTL_MAGIC 0x54574653u /* "TWFS" */
#define MAX_RULES 8
#define PATH_BYTES 64

enum op { OP_READ = 1, OP_WRITE = 2, OP_SYNC = 4, OP_TRUNCATE = 8 };
enum action { ACT_ERROR = 1, ACT_SHORT = 2, ACT_STALL = 3, ACT_CORRUPT = 4 };

struct rule {
    uint32_t active;
    uint32_t ops;      /* bit mask of enum op */
    int32_t action;    /* enum action */
    int32_t err;       /* errno for ACT_ERROR */
    uint64_t skip;     /* matching calls let through first */
    int64_t count;     /* faults to give; < 0: no end */
    uint64_t stall_ms; /* for ACT_STALL */
    uint64_t hits;     /* written by the shim: matching calls */
    uint64_t fired;    /* written by the shim: faults given */
    char path[PATH_BYTES];
};

struct ctl {
    uint32_t magic;
    uint32_t nrules;
    struct rule rules[MAX_RULES];
};

static struct ctl *ctl;

__attribute__((constructor)) static void shim_init(void) {
    const char *p = getenv("TWINFS_FAULT_CTL");
    if (!p) return;
    int fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0) return;
    void *m = mmap(NULL, sizeof(struct ctl), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m != MAP_FAILED && ((struct ctl *)m)->magic == CTL_MAGIC) ctl = m;
}

#define REAL(name, ret, ...)                                   \
    static ret (*real_##name)(__VA_ARGS__);                    \
    static void resolve_##name(void) {                         \
        if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name); \
    }

REAL(pread64, ssize_t, int, void *, size_t, off_t)
REAL(pwrite64, ssize_t, int, const void *, size_t, off_t)
REAL(pwritev2, ssize_t, int, const struct iovec *, int, off_t, int)
REAL(read, ssize_t, int, void *, size_t)
REAL(write, ssize_t, int, const void *, size_t)
REAL(writev, ssize_t, int, const struct iovec *, int)
REAL(fsync, int, int)
REAL(fdatasync, int, int)
REAL(sync_file_range, int, int, off64_t, off64_t, unsigned int)
REAL(ftruncate64, int, int, off_t)

/* The rule that acts on this call, or NULL. */
static struct rule *match(int fd, uint32_t op) {
    if (!ctl) return NULL;
    uint32_t n = __atomic_load_n(&ctl->nrules, __ATOMIC_ACQUIRE);
    if (n == 0) return NULL;
    if (n > MAX_RULES) n = MAX_RULES;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len < 0) return NULL;
    path[len] = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct rule *r = &ctl->rules[i];
        if (!__atomic_load_n(&r->active, __ATOMIC_ACQUIRE) || !(r->ops & op)) continue;
        char want[PATH_BYTES + 1];
        memcpy(want, r->path, PATH_BYTES);
        want[PATH_BYTES] = 0;
        if (!strstr(path, want)) continue;
        uint64_t hit = __atomic_add_fetch(&r->hits, 1, __ATOMIC_ACQ_REL);
        if (hit <= r->skip) continue;
        if (r->count >= 0) {
            uint64_t f = __atomic_load_n(&r->fired, __ATOMIC_ACQUIRE);
            for (;;) {
                if ((int64_t)f >= r->count) break;
                if (__atomic_compare_exchange_n(&r->fired, &f, f + 1, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE))
                    return r;
            }
            continue;
        }
        __atomic_add_fetch(&r->fired, 1, __ATOMIC_ACQ_REL);
        return r;
    }
    return NULL;
}

static void stall(const struct rule *r) {
    struct timespec ts = {(time_t)(r->stall_ms / 1000), (long)(r->stall_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Flips one bit in the middle of what a read returned. */
static void corrupt(void *buf, ssize_t got) {
    if (got > 0) ((unsigned char *)buf)[got / 2] ^= 0x10;
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
    resolve_pread64();
    struct rule *r = match(fd, OP_READ);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    ssize_t got = real_pread64(fd, buf, n, off);
    if (r && r->action == ACT_CORRUPT) corrupt(buf, got);
    return got;
}

ssize_t read(int fd, void *buf, size_t n) {
    resolve_read();
    struct rule *r = match(fd, OP_READ);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    ssize_t got = real_read(fd, buf, n);
    if (r && r->action == ACT_CORRUPT) corrupt(buf, got);
    return got;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    resolve_pwrite64();
    struct rule *r = match(fd, OP_WRITE);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    if (r && r->action == ACT_SHORT && n > 1) n /= 2;
    return real_pwrite64(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n) {
    resolve_write();
    struct rule *r = match(fd, OP_WRITE);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    if (r && r->action == ACT_SHORT && n > 1) n /= 2;
    return real_write(fd, buf, n);
}

/* A short vectored write writes the first half of the first buffer only. */
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    resolve_pwritev2();
    struct rule *r = match(fd, OP_WRITE);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    if (r && r->action == ACT_SHORT && cnt > 0 && iov[0].iov_len > 1) {
        struct iovec half = {iov[0].iov_base, iov[0].iov_len / 2};
        return real_pwritev2(fd, &half, 1, off, flags);
    }
    return real_pwritev2(fd, iov, cnt, off, flags);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    resolve_writev();
    struct rule *r = match(fd, OP_WRITE);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    if (r && r->action == ACT_SHORT && cnt > 0 && iov[0].iov_len > 1) {
        struct iovec half = {iov[0].iov_base, iov[0].iov_len / 2};
        return real_writev(fd, &half, 1);
    }
    return real_writev(fd, iov, cnt);
}

static int sync_call(int fd, int (*real)(int)) {
    struct rule *r = match(fd, OP_SYNC);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    return real(fd);
}

int fsync(int fd) {
    resolve_fsync();
    return sync_call(fd, real_fsync);
}

int fdatasync(int fd) {
    resolve_fdatasync();
    return sync_call(fd, real_fdatasync);
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    resolve_sync_file_range();
    struct rule *r = match(fd, OP_SYNC);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    return real_sync_file_range(fd, off, n, flags);
}

int ftruncate64(int fd, off_t len) {
    resolve_ftruncate64();
    struct rule *r = match(fd, OP_TRUNCATE);
    if (r && r->action == ACT_ERROR) {
        errno = r->err;
        return -1;
    }
    if (r && r->action == ACT_STALL) stall(r);
    return real_ftruncate64(fd, len);
}
