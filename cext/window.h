/* The VMM's side of a DAX cache window: a reserved range of address space into which a
 * front-end maps file ranges the back-end asks for (MAP_FIXED|MAP_SHARED), and puts
 * inaccessible anonymous memory back on unmap.  Used by pyvirtiofsd.frontend. */
#ifndef PVFS_WINDOW_H
#define PVFS_WINDOW_H

#include <stdint.h>

/* CFFI-BEGIN */
/* Reserve size bytes of PROT_NONE address space; 0 on failure (*err = -errno). */
uintptr_t pvfs_window_reserve(uint64_t size, int *err);
/* Map fd[offset, offset+len) at addr, shared, read-only or read-write.  0 or -errno. */
int pvfs_window_map(uintptr_t addr, uint64_t len, int writable, int fd, uint64_t offset);
/* Replace [addr, addr+len) with inaccessible anonymous memory.  0 or -errno. */
int pvfs_window_unmap(uintptr_t addr, uint64_t len);
int pvfs_window_release(uintptr_t addr, uint64_t size);
/* Copy between a window address and a buffer without dying on a fault: returns bytes
 * copied or -EFAULT (uses process_vm_readv/writev on ourselves). */
int64_t pvfs_window_read(uintptr_t addr, void *buf, uint64_t len);
int64_t pvfs_window_write(uintptr_t addr, const void *buf, uint64_t len);
/* CFFI-END */

#endif
