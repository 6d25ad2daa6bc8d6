/*
 * fake-cpuinfo.c — LD_PRELOAD shim for running aarch64 ONNX Runtime under qemu-user.
 *
 * qemu-user (7.2, Debian 12) passes the program's open("/proc/cpuinfo") through to the
 * host kernel, so an emulated aarch64 process reads the x86_64 host's cpuinfo. ONNX
 * Runtime's CPU detection (pytorch/cpuinfo) finds no "CPU implementer"/"CPU part" lines
 * in it and ORT crashes (SIGSEGV) while creating its environment.
 *
 * This shim answers every open/openat/fopen of /proc/cpuinfo with an in-memory file
 * (memfd) describing Cortex-A76 cores, one per host CPU (sysconf(_SC_NPROCESSORS_CONF),
 * which matches /sys/devices/system/cpu/possible that cpuinfo also reads). Everything
 * else is passed to libc untouched. Set FAKE_CPUINFO=/path/to/file to serve that file's
 * contents instead.
 *
 * Build (cross/smoke-aarch64.sh does this):
 *   aarch64-linux-gnu-gcc -O2 -shared -fPIC -o fake-cpuinfo.so cross/fake-cpuinfo.c -ldl
 * Use:
 *   qemu-aarch64 -L / -cpu cortex-a76 -E LD_PRELOAD=$PWD/fake-cpuinfo.so ./framesift ...
 *
 * Only for emulation: never ship this in the bundle.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char CPUINFO_PATH[] = "/proc/cpuinfo";

static const char CORE_TEMPLATE[] =
    "processor\t: %ld\n"
    "BogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\n"
    "CPU architecture: 8\n"
    "CPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\n"
    "CPU revision\t: 1\n"
    "\n";

static int is_cpuinfo(const char *path) {
    return path != NULL && strcmp(path, CPUINFO_PATH) == 0;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A read-positioned fd holding the fake cpuinfo, or -1 with errno set. */
static int fake_cpuinfo_fd(void) {
    int fd = memfd_create("fake-cpuinfo", MFD_CLOEXEC);
    if (fd < 0) return -1;
    const char *file = getenv("FAKE_CPUINFO");
    if (file != NULL && *file != '\0') {
        int (*real_open)(const char *, int, ...) =
            (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
        int src = real_open(file, O_RDONLY | O_CLOEXEC);
        if (src < 0) { int e = errno; close(fd); errno = e; return -1; }
        char buf[4096];
        ssize_t n;
        while ((n = read(src, buf, sizeof buf)) > 0) {
            if (write_all(fd, buf, (size_t)n) < 0) { int e = errno; close(src); close(fd); errno = e; return -1; }
        }
        close(src);
    } else {
        long cpus = sysconf(_SC_NPROCESSORS_CONF);
        if (cpus < 1) cpus = 1;
        for (long i = 0; i < cpus; i++) {
            char buf[512];
            int n = snprintf(buf, sizeof buf, CORE_TEMPLATE, i);
            if (n < 0 || write_all(fd, buf, (size_t)n) < 0) { int e = errno; close(fd); errno = e; return -1; }
        }
    }
    if (lseek(fd, 0, SEEK_SET) < 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}

#define REAL(name, type) static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef FILE *(*fopen_fn)(const char *, const char *);

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    REAL(open, open_fn);
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    REAL(open64, open_fn);
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    REAL(openat, openat_fn);
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    REAL(openat64, openat_fn);
    return real_openat64(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE variants. */
int __open_2(const char *path, int flags) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    REAL(__open_2, open2_fn);
    return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    REAL(__open64_2, open2_fn);
    return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags) {
    if (is_cpuinfo(path)) return fake_cpuinfo_fd();
    REAL(__openat_2, openat2_fn);
    return real___openat_2(dirfd, path, flags);
}

static FILE *fake_fopen(const char *mode) {
    int fd = fake_cpuinfo_fd();
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, mode);
    if (f == NULL) { int e = errno; close(fd); errno = e; }
    return f;
}

FILE *fopen(const char *path, const char *mode) {
    if (is_cpuinfo(path)) return fake_fopen(mode);
    REAL(fopen, fopen_fn);
    return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    if (is_cpuinfo(path)) return fake_fopen(mode);
    REAL(fopen64, fopen_fn);
    return real_fopen64(path, mode);
}
