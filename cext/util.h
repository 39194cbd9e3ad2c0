#ifndef PVFS_UTIL_H
#define PVFS_UTIL_H
#include <stdint.h>
/* CFFI-BEGIN */
int pvfs_abi_version(void);
/* CFFI-END */
#endif
