#include "util.h"
int pvfs_abi_version(void) { return 1; }
