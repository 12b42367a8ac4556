/* Preloaded into the aarch64 `tolk` only under qemu-user (deploy/jetson/cross.sh check), never on a
 * device. oneDNN's CPU detection (xbyak_aarch64, linked into libtorch_cpu.so) opens
 * /sys/devices/system/cpu/cpu0/regs/identification/midr_el1 and fails when it is absent, which it
 * is on the x86-64 host qemu-user runs on. Opens of that one path are redirected to the file named
 * by TOLK_FAKE_MIDR_EL1; every other path goes to libc unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MIDR_PATH[] = "/sys/devices/system/cpu/cpu0/regs/identification/midr_el1";

static const char *redirect(const char *path) {
  if (path != NULL && strcmp(path, MIDR_PATH) == 0) {
    const char *fake = getenv("TOLK_FAKE_MIDR_EL1");
    if (fake != NULL && fake[0] != '\0') return fake;
  }
  return path;
}

#define NEXT(name, type) ((type)dlsym(RTLD_NEXT, name))

FILE *fopen(const char *path, const char *mode) {
  return NEXT("fopen", FILE *(*)(const char *, const char *))(redirect(path), mode);
}

FILE *fopen64(const char *path, const char *mode) {
  return NEXT("fopen64", FILE *(*)(const char *, const char *))(redirect(path), mode);
}

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return NEXT("open", int (*)(const char *, int, ...))(redirect(path), flags, mode);
}

int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return NEXT("open64", int (*)(const char *, int, ...))(redirect(path), flags, mode);
}

int openat(int dir, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return NEXT("openat", int (*)(int, const char *, int, ...))(dir, redirect(path), flags, mode);
}
