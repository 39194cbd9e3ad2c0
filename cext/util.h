/* Small things every C module shares. */
#ifndef PVFS_UTIL_H
#define PVFS_UTIL_H
#include <stdint.h>
#include <sys/uio.h>

/* CFFI-BEGIN */
/*cffi: struct iovec { void *iov_base; size_t iov_len; }; */
/* Bumped when a C signature changes, so a stale build is caught at import. */
int pvfs_abi_version(void);
/* CFFI-END */

#endif
