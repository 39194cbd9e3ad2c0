#define _GNU_SOURCE
#include "window.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

uintptr_t pvfs_window_reserve(uint64_t size, int *err)
{
    void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        *err = -errno;
        return 0;
    }
    *err = 0;
    return (uintptr_t)p;
}

int pvfs_window_map(uintptr_t addr, uint64_t len, int writable, int fd, uint64_t offset)
{
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap((void *)addr, len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    return p == MAP_FAILED ? -errno : 0;
}

int pvfs_window_unmap(uintptr_t addr, uint64_t len)
{
    void *p = mmap((void *)addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? -errno : 0;
}

int pvfs_window_release(uintptr_t addr, uint64_t size)
{
    return munmap((void *)addr, size) ? -errno : 0;
}

static int64_t self_copy(uintptr_t addr, void *buf, uint64_t len, int write_)
{
    struct iovec local = {.iov_base = buf, .iov_len = len};
    struct iovec remote = {.iov_base = (void *)addr, .iov_len = len};
    ssize_t n = write_ ? process_vm_writev(getpid(), &local, 1, &remote, 1, 0)
                       : process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    return n < 0 ? -errno : n;
}

int64_t pvfs_window_read(uintptr_t addr, void *buf, uint64_t len)
{
    return self_copy(addr, buf, len, 0);
}

int64_t pvfs_window_write(uintptr_t addr, const void *buf, uint64_t len)
{
    return self_copy(addr, (void *)buf, len, 1);
}
