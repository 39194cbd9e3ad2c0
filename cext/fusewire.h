/* The FUSE wire layout for C: opcodes, flag bits and the request/reply structs.
 *
 * One definition for every C module (the daemon's hot path, the benchmark's request loop)
 * instead of magic offsets in each.  backend/pyvirtiofsd/fuse/abi.py is the reference; the
 * names follow the Linux uapi header include/uapi/linux/fuse.h with a PVFS_ / pvfs_ prefix
 * (struct fuse_entry_out there is struct pvfs_fuse_entry_out here, FUSE_CREATE is
 * PVFS_FUSE_CREATE), so they never clash with a system <linux/fuse.h>.
 * tests/unit/test_fuse_wire_layout.py checks every struct's size and every field's offset
 * against abi.py, in both extensions.
 *
 * Byte order: the fields are little-endian on the wire (virtio-fs carries FUSE between a
 * guest and a host of the same architecture, and this project runs on little-endian ones).
 * Read them with le16toh/le32toh/le64toh and write them with htole*, as for any wire data.
 *
 * Alignment: every FUSE struct is laid out so that each field sits at a multiple of its own
 * size and the total is a multiple of 8, so the compiler's natural layout is the wire layout
 * on every ABI this project builds for; no __attribute__((packed)) is needed (and none is
 * used: it would make taking a field's address a warning).  The _Static_asserts at the end
 * pin the sizes for the compiler, the test pins every offset.  A request's buffer in guest
 * RAM need not be aligned, so copy a struct out (memcpy) rather than casting a pointer to it.
 *
 * Header-only: there is no fusewire.c.  cext/build.py lists it in SHARED_HEADERS, so the
 * marked block below is in the cdef of both extensions (pyvirtiofsd._cext and _testkit).
 */
#ifndef PVFS_FUSEWIRE_H
#define PVFS_FUSEWIRE_H

#include <stdint.h>

/* CFFI-BEGIN */

/* ---- protocol constants ---------------------------------------------------------------- */

#define PVFS_FUSE_KERNEL_VERSION 7
#define PVFS_FUSE_ROOT_ID 1
#define PVFS_FUSE_UNIQUE_RESEND 0x8000000000000000   /* fuse_in_header.unique: a resent request */
#define PVFS_FUSE_NAME_MAX 1024                      /* the longest name Linux sends */

enum pvfs_fuse_opcode {
    PVFS_FUSE_LOOKUP = 1,
    PVFS_FUSE_FORGET = 2,                /* no reply */
    PVFS_FUSE_GETATTR = 3,
    PVFS_FUSE_SETATTR = 4,
    PVFS_FUSE_READLINK = 5,
    PVFS_FUSE_SYMLINK = 6,
    PVFS_FUSE_MKNOD = 8,
    PVFS_FUSE_MKDIR = 9,
    PVFS_FUSE_UNLINK = 10,
    PVFS_FUSE_RMDIR = 11,
    PVFS_FUSE_RENAME = 12,
    PVFS_FUSE_LINK = 13,
    PVFS_FUSE_OPEN = 14,
    PVFS_FUSE_READ = 15,
    PVFS_FUSE_WRITE = 16,
    PVFS_FUSE_STATFS = 17,
    PVFS_FUSE_RELEASE = 18,
    PVFS_FUSE_FSYNC = 20,
    PVFS_FUSE_SETXATTR = 21,
    PVFS_FUSE_GETXATTR = 22,
    PVFS_FUSE_LISTXATTR = 23,
    PVFS_FUSE_REMOVEXATTR = 24,
    PVFS_FUSE_FLUSH = 25,
    PVFS_FUSE_INIT = 26,
    PVFS_FUSE_OPENDIR = 27,
    PVFS_FUSE_READDIR = 28,
    PVFS_FUSE_RELEASEDIR = 29,
    PVFS_FUSE_FSYNCDIR = 30,
    PVFS_FUSE_GETLK = 31,
    PVFS_FUSE_SETLK = 32,
    PVFS_FUSE_SETLKW = 33,
    PVFS_FUSE_ACCESS = 34,
    PVFS_FUSE_CREATE = 35,
    PVFS_FUSE_INTERRUPT = 36,
    PVFS_FUSE_BMAP = 37,
    PVFS_FUSE_DESTROY = 38,
    PVFS_FUSE_IOCTL = 39,
    PVFS_FUSE_POLL = 40,
    PVFS_FUSE_NOTIFY_REPLY = 41,
    PVFS_FUSE_BATCH_FORGET = 42,         /* no reply */
    PVFS_FUSE_FALLOCATE = 43,
    PVFS_FUSE_READDIRPLUS = 44,
    PVFS_FUSE_RENAME2 = 45,
    PVFS_FUSE_LSEEK = 46,
    PVFS_FUSE_COPY_FILE_RANGE = 47,
    PVFS_FUSE_SETUPMAPPING = 48,         /* virtio-fs DAX */
    PVFS_FUSE_REMOVEMAPPING = 49,        /* virtio-fs DAX */
    PVFS_FUSE_SYNCFS = 50,
    PVFS_FUSE_TMPFILE = 51,
    PVFS_FUSE_STATX = 52,
    PVFS_FUSE_COPY_FILE_RANGE_64 = 53,
    PVFS_CUSE_INIT = 4096,
};

/* FUSE_INIT: fuse_init_in/out.flags, and flags2 as bits 32.. (flags2 << 32 | flags). */
#define PVFS_FUSE_ASYNC_READ 0x1
#define PVFS_FUSE_POSIX_LOCKS 0x2
#define PVFS_FUSE_FILE_OPS 0x4
#define PVFS_FUSE_ATOMIC_O_TRUNC 0x8
#define PVFS_FUSE_EXPORT_SUPPORT 0x10
#define PVFS_FUSE_BIG_WRITES 0x20
#define PVFS_FUSE_DONT_MASK 0x40
#define PVFS_FUSE_SPLICE_WRITE 0x80
#define PVFS_FUSE_SPLICE_MOVE 0x100
#define PVFS_FUSE_SPLICE_READ 0x200
#define PVFS_FUSE_FLOCK_LOCKS 0x400
#define PVFS_FUSE_HAS_IOCTL_DIR 0x800
#define PVFS_FUSE_AUTO_INVAL_DATA 0x1000
#define PVFS_FUSE_DO_READDIRPLUS 0x2000
#define PVFS_FUSE_READDIRPLUS_AUTO 0x4000
#define PVFS_FUSE_ASYNC_DIO 0x8000
#define PVFS_FUSE_WRITEBACK_CACHE 0x10000
#define PVFS_FUSE_NO_OPEN_SUPPORT 0x20000
#define PVFS_FUSE_PARALLEL_DIROPS 0x40000
#define PVFS_FUSE_HANDLE_KILLPRIV 0x80000
#define PVFS_FUSE_POSIX_ACL 0x100000
#define PVFS_FUSE_ABORT_ERROR 0x200000
#define PVFS_FUSE_MAX_PAGES 0x400000
#define PVFS_FUSE_CACHE_SYMLINKS 0x800000
#define PVFS_FUSE_NO_OPENDIR_SUPPORT 0x1000000
#define PVFS_FUSE_EXPLICIT_INVAL_DATA 0x2000000
#define PVFS_FUSE_MAP_ALIGNMENT 0x4000000
#define PVFS_FUSE_SUBMOUNTS 0x8000000
#define PVFS_FUSE_HANDLE_KILLPRIV_V2 0x10000000
#define PVFS_FUSE_SETXATTR_EXT 0x20000000
#define PVFS_FUSE_INIT_EXT 0x40000000
#define PVFS_FUSE_INIT_RESERVED 0x80000000
#define PVFS_FUSE_SECURITY_CTX 0x100000000
#define PVFS_FUSE_HAS_INODE_DAX 0x200000000
#define PVFS_FUSE_CREATE_SUPP_GROUP 0x400000000
#define PVFS_FUSE_HAS_EXPIRE_ONLY 0x800000000
#define PVFS_FUSE_DIRECT_IO_ALLOW_MMAP 0x1000000000
#define PVFS_FUSE_PASSTHROUGH 0x2000000000
#define PVFS_FUSE_NO_EXPORT_SUPPORT 0x4000000000
#define PVFS_FUSE_HAS_RESEND 0x8000000000
#define PVFS_FUSE_ALLOW_IDMAP 0x10000000000
#define PVFS_FUSE_OVER_IO_URING 0x20000000000
#define PVFS_FUSE_REQUEST_TIMEOUT 0x40000000000

/* fuse_setattr_in.valid */
#define PVFS_FATTR_MODE 0x1
#define PVFS_FATTR_UID 0x2
#define PVFS_FATTR_GID 0x4
#define PVFS_FATTR_SIZE 0x8
#define PVFS_FATTR_ATIME 0x10
#define PVFS_FATTR_MTIME 0x20
#define PVFS_FATTR_FH 0x40
#define PVFS_FATTR_ATIME_NOW 0x80
#define PVFS_FATTR_MTIME_NOW 0x100
#define PVFS_FATTR_LOCKOWNER 0x200
#define PVFS_FATTR_CTIME 0x400
#define PVFS_FATTR_KILL_SUIDGID 0x800

/* fuse_open_out.open_flags */
#define PVFS_FOPEN_DIRECT_IO 0x1
#define PVFS_FOPEN_KEEP_CACHE 0x2
#define PVFS_FOPEN_NONSEEKABLE 0x4
#define PVFS_FOPEN_CACHE_DIR 0x8
#define PVFS_FOPEN_STREAM 0x10
#define PVFS_FOPEN_NOFLUSH 0x20
#define PVFS_FOPEN_PARALLEL_DIRECT_WRITES 0x40
#define PVFS_FOPEN_PASSTHROUGH 0x80

/* fuse_open_in.open_flags, fuse_create_in.open_flags */
#define PVFS_FUSE_OPEN_KILL_SUIDGID 0x1
/* fuse_release_in.release_flags */
#define PVFS_FUSE_RELEASE_FLUSH 0x1
#define PVFS_FUSE_RELEASE_FLOCK_UNLOCK 0x2
/* fuse_getattr_in.getattr_flags */
#define PVFS_FUSE_GETATTR_FH 0x1
/* fuse_write_in.write_flags */
#define PVFS_FUSE_WRITE_CACHE 0x1
#define PVFS_FUSE_WRITE_LOCKOWNER 0x2
#define PVFS_FUSE_WRITE_KILL_SUIDGID 0x4
/* fuse_read_in.read_flags */
#define PVFS_FUSE_READ_LOCKOWNER 0x2
/* fuse_fsync_in.fsync_flags */
#define PVFS_FUSE_FSYNC_FDATASYNC 0x1
/* fuse_attr.flags */
#define PVFS_FUSE_ATTR_SUBMOUNT 0x1
#define PVFS_FUSE_ATTR_DAX 0x2
/* fuse_setxattr_in.setxattr_flags */
#define PVFS_FUSE_SETXATTR_ACL_KILL_SGID 0x1
/* fuse_setupmapping_in.flags */
#define PVFS_FUSE_SETUPMAPPING_FLAG_WRITE 0x1
#define PVFS_FUSE_SETUPMAPPING_FLAG_READ 0x2

/* Request extensions (7.38+, fuse_in_header.total_extlen): a security context's
 * fuse_ext_header.type is its context count, at most this; supplementary groups. */
#define PVFS_FUSE_MAX_NR_SECCTX 31
#define PVFS_FUSE_EXT_GROUPS 32

/* Sizes of older minors' shorter structs (the full sizes are sizeof the structs below). */
#define PVFS_FUSE_COMPAT_ENTRY_OUT_SIZE 120     /* < 7.9: fuse_attr without blksize/flags */
#define PVFS_FUSE_COMPAT_ATTR_OUT_SIZE 96       /* < 7.9 */
#define PVFS_FUSE_COMPAT_MKNOD_IN_SIZE 8        /* < 7.12: no umask */
#define PVFS_FUSE_COMPAT_WRITE_IN_SIZE 24       /* < 7.9: no lock_owner/flags */
#define PVFS_FUSE_COMPAT_STATFS_SIZE 48         /* < 7.4: no frsize */
#define PVFS_FUSE_COMPAT_SETXATTR_IN_SIZE 8     /* without FUSE_SETXATTR_EXT */
#define PVFS_FUSE_COMPAT_INIT_OUT_SIZE 8        /* < 7.5 */
#define PVFS_FUSE_COMPAT_22_INIT_OUT_SIZE 24    /* < 7.23 */
#define PVFS_FUSE_INIT_IN_COMPAT_SIZE 16        /* fuse_init_in without flags2/unused */

/* ---- headers ----------------------------------------------------------------------------- */

/* Every request starts with this; the opcode's own struct (if any) and names follow. */
struct pvfs_fuse_in_header {
    uint32_t len;               /* of the whole request, this header included */
    uint32_t opcode;            /* enum pvfs_fuse_opcode */
    uint64_t unique;
    uint64_t nodeid;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint16_t total_extlen;      /* extensions at the end, in units of 8 bytes */
    uint16_t padding;
};

/* Every reply starts with this; on an error (-errno) nothing follows. */
struct pvfs_fuse_out_header {
    uint32_t len;               /* of the whole reply, this header included */
    int32_t error;
    uint64_t unique;
};

/* ---- attributes and entries ----------------------------------------------------------- */

struct pvfs_fuse_attr {
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t atime;
    uint64_t mtime;
    uint64_t ctime;
    uint32_t atimensec;
    uint32_t mtimensec;
    uint32_t ctimensec;
    uint32_t mode;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint32_t rdev;
    uint32_t blksize;
    uint32_t flags;             /* PVFS_FUSE_ATTR_* */
};

/* LOOKUP, MKNOD, MKDIR, SYMLINK, LINK replies; the first half of CREATE's and TMPFILE's. */
struct pvfs_fuse_entry_out {
    uint64_t nodeid;
    uint64_t generation;
    uint64_t entry_valid;       /* seconds */
    uint64_t attr_valid;
    uint32_t entry_valid_nsec;
    uint32_t attr_valid_nsec;
    struct pvfs_fuse_attr attr;
};

/* GETATTR and SETATTR replies. */
struct pvfs_fuse_attr_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec;
    uint32_t dummy;
    struct pvfs_fuse_attr attr;
};

struct pvfs_fuse_getattr_in {
    uint32_t getattr_flags;     /* PVFS_FUSE_GETATTR_FH: fh is set */
    uint32_t dummy;
    uint64_t fh;
};

struct pvfs_fuse_setattr_in {
    uint32_t valid;             /* PVFS_FATTR_* */
    uint32_t padding;
    uint64_t fh;
    uint64_t size;
    uint64_t lock_owner;
    uint64_t atime;
    uint64_t mtime;
    uint64_t ctime;
    uint32_t atimensec;
    uint32_t mtimensec;
    uint32_t ctimensec;
    uint32_t mode;
    uint32_t unused4;
    uint32_t uid;
    uint32_t gid;
    uint32_t unused5;
};

/* ---- creating and removing ------------------------------------------------------------ */

/* MKNOD: then the name. */
struct pvfs_fuse_mknod_in {
    uint32_t mode;
    uint32_t rdev;
    uint32_t umask;
    uint32_t padding;
};

/* MKDIR: then the name. */
struct pvfs_fuse_mkdir_in {
    uint32_t mode;
    uint32_t umask;
};

/* RENAME: then the old name and the new name. */
struct pvfs_fuse_rename_in {
    uint64_t newdir;
};

/* RENAME2: then the old name and the new name. */
struct pvfs_fuse_rename2_in {
    uint64_t newdir;
    uint32_t flags;             /* RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT */
    uint32_t padding;
};

/* LINK (nodeid: the new parent): then the new name. */
struct pvfs_fuse_link_in {
    uint64_t oldnodeid;
};

/* ---- open files ------------------------------------------------------------------------ */

struct pvfs_fuse_open_in {
    uint32_t flags;             /* open(2) flags */
    uint32_t open_flags;        /* PVFS_FUSE_OPEN_KILL_SUIDGID */
};

/* CREATE (nodeid: the parent): then the name.  The reply is fuse_entry_out then
 * fuse_open_out. */
struct pvfs_fuse_create_in {
    uint32_t flags;
    uint32_t mode;
    uint32_t umask;
    uint32_t open_flags;
};

/* OPEN and OPENDIR replies; the second half of CREATE's. */
struct pvfs_fuse_open_out {
    uint64_t fh;
    uint32_t open_flags;        /* PVFS_FOPEN_* */
    int32_t backing_id;
};

/* RELEASE and RELEASEDIR. */
struct pvfs_fuse_release_in {
    uint64_t fh;
    uint32_t flags;
    uint32_t release_flags;     /* PVFS_FUSE_RELEASE_* */
    uint64_t lock_owner;
};

struct pvfs_fuse_flush_in {
    uint64_t fh;
    uint32_t unused;
    uint32_t padding;
    uint64_t lock_owner;
};

/* READ, READDIR and READDIRPLUS.  The reply is the data (or the records). */
struct pvfs_fuse_read_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t read_flags;        /* PVFS_FUSE_READ_LOCKOWNER */
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

/* WRITE: then the data. */
struct pvfs_fuse_write_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t write_flags;       /* PVFS_FUSE_WRITE_* */
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

struct pvfs_fuse_write_out {
    uint32_t size;
    uint32_t padding;
};

/* FSYNC and FSYNCDIR. */
struct pvfs_fuse_fsync_in {
    uint64_t fh;
    uint32_t fsync_flags;       /* PVFS_FUSE_FSYNC_FDATASYNC */
    uint32_t padding;
};

struct pvfs_fuse_fallocate_in {
    uint64_t fh;
    uint64_t offset;
    uint64_t length;
    uint32_t mode;
    uint32_t padding;
};

struct pvfs_fuse_lseek_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t whence;
    uint32_t padding;
};

struct pvfs_fuse_lseek_out {
    uint64_t offset;
};

struct pvfs_fuse_copy_file_range_in {
    uint64_t fh_in;
    uint64_t off_in;
    uint64_t nodeid_out;
    uint64_t fh_out;
    uint64_t off_out;
    uint64_t len;
    uint64_t flags;
};

/* ---- forgetting ------------------------------------------------------------------------ */

/* FORGET (no reply). */
struct pvfs_fuse_forget_in {
    uint64_t nlookup;
};

/* BATCH_FORGET (no reply): fuse_batch_forget_in, then count of these. */
struct pvfs_fuse_forget_one {
    uint64_t nodeid;
    uint64_t nlookup;
};

struct pvfs_fuse_batch_forget_in {
    uint32_t count;
    uint32_t dummy;
};

/* ---- the file system ------------------------------------------------------------------- */

struct pvfs_fuse_kstatfs {
    uint64_t blocks;
    uint64_t bfree;
    uint64_t bavail;
    uint64_t files;
    uint64_t ffree;
    uint32_t bsize;
    uint32_t namelen;
    uint32_t frsize;
    uint32_t padding;
    uint32_t spare[6];
};

/* STATFS reply. */
struct pvfs_fuse_statfs_out {
    struct pvfs_fuse_kstatfs st;
};

struct pvfs_fuse_syncfs_in {
    uint64_t padding;
};

struct pvfs_fuse_init_in {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint32_t flags2;            /* with PVFS_FUSE_INIT_EXT: the flags' bits 32.. */
    uint32_t unused[11];
};

struct pvfs_fuse_init_out {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint16_t max_background;
    uint16_t congestion_threshold;
    uint32_t max_write;
    uint32_t time_gran;
    uint16_t max_pages;
    uint16_t map_alignment;
    uint32_t flags2;
    uint32_t max_stack_depth;
    uint16_t request_timeout;
    uint16_t padding;
    uint32_t unused[5];
};

struct pvfs_fuse_interrupt_in {
    uint64_t unique;
};

/* ---- extended attributes and access ---------------------------------------------------- */

/* SETXATTR: then the name and the value.  Without PVFS_FUSE_SETXATTR_EXT the request has
 * only the first two fields (PVFS_FUSE_COMPAT_SETXATTR_IN_SIZE). */
struct pvfs_fuse_setxattr_in {
    uint32_t size;
    uint32_t flags;
    uint32_t setxattr_flags;    /* PVFS_FUSE_SETXATTR_ACL_KILL_SGID */
    uint32_t padding;
};

/* GETXATTR and LISTXATTR. */
struct pvfs_fuse_getxattr_in {
    uint32_t size;
    uint32_t padding;
};

struct pvfs_fuse_getxattr_out {
    uint32_t size;
    uint32_t padding;
};

struct pvfs_fuse_access_in {
    uint32_t mask;
    uint32_t padding;
};

/* ---- request extensions (7.38+) -------------------------------------------------------- */

struct pvfs_fuse_ext_header {
    uint32_t size;              /* bytes, this header included, a multiple of 8 */
    uint32_t type;
};

struct pvfs_fuse_secctx_header {
    uint32_t size;
    uint32_t nr_secctx;
};

/* One security context: then its NUL-terminated xattr name and its value. */
struct pvfs_fuse_secctx {
    uint32_t size;              /* of the value */
    uint32_t padding;
};

/* PVFS_FUSE_EXT_GROUPS: then nr_groups uint32_t gids. */
struct pvfs_fuse_supp_groups {
    uint32_t nr_groups;
};

/* ---- directories ----------------------------------------------------------------------- */

/* One READDIR record: this, then namelen bytes of name, padded with zeros to 8 bytes. */
struct pvfs_fuse_dirent {
    uint64_t ino;
    uint64_t off;               /* where the next READDIR continues */
    uint32_t namelen;
    uint32_t type;              /* DT_* */
};

/* One READDIRPLUS record: the entry, then the dirent (and its padded name). */
struct pvfs_fuse_direntplus {
    struct pvfs_fuse_entry_out entry_out;
    struct pvfs_fuse_dirent dirent;
};

/* ---- virtio-fs DAX --------------------------------------------------------------------- */

struct pvfs_fuse_setupmapping_in {
    uint64_t fh;
    uint64_t foffset;           /* file offset */
    uint64_t len;
    uint64_t flags;             /* PVFS_FUSE_SETUPMAPPING_FLAG_* */
    uint64_t moffset;           /* offset in the DAX window */
};

/* REMOVEMAPPING: this, then count fuse_removemapping_one. */
struct pvfs_fuse_removemapping_in {
    uint32_t count;
};

struct pvfs_fuse_removemapping_one {
    uint64_t moffset;
    uint64_t len;
};

/* ---- STATX (7.39) ---------------------------------------------------------------------- */

struct pvfs_fuse_statx_in {
    uint32_t getattr_flags;
    uint32_t reserved;
    uint64_t fh;
    uint32_t sx_flags;
    uint32_t sx_mask;
};

struct pvfs_fuse_sx_time {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t reserved;
};

struct pvfs_fuse_statx {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint16_t mode;
    uint16_t spare0;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t attributes_mask;
    struct pvfs_fuse_sx_time atime;
    struct pvfs_fuse_sx_time btime;
    struct pvfs_fuse_sx_time ctime;
    struct pvfs_fuse_sx_time mtime;
    uint32_t rdev_major;
    uint32_t rdev_minor;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint64_t spare2[14];
};

struct pvfs_fuse_statx_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec;
    uint32_t flags;
    uint64_t spare0;
    uint64_t spare1;
    struct pvfs_fuse_statx stat;
};

/* CFFI-END */

/* The sizes include/uapi/linux/fuse.h fixes (the compiler checks them here; the unit test
 * checks every field's offset against abi.py). */
_Static_assert(sizeof(struct pvfs_fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct pvfs_fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct pvfs_fuse_attr) == 88, "fuse_attr");
_Static_assert(sizeof(struct pvfs_fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct pvfs_fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct pvfs_fuse_setattr_in) == 88, "fuse_setattr_in");
_Static_assert(sizeof(struct pvfs_fuse_open_out) == 16, "fuse_open_out");
_Static_assert(sizeof(struct pvfs_fuse_read_in) == 40, "fuse_read_in");
_Static_assert(sizeof(struct pvfs_fuse_write_in) == 40, "fuse_write_in");
_Static_assert(sizeof(struct pvfs_fuse_release_in) == 24, "fuse_release_in");
_Static_assert(sizeof(struct pvfs_fuse_kstatfs) == 80, "fuse_kstatfs");
_Static_assert(sizeof(struct pvfs_fuse_init_in) == 64, "fuse_init_in");
_Static_assert(sizeof(struct pvfs_fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct pvfs_fuse_dirent) == 24, "fuse_dirent");
_Static_assert(sizeof(struct pvfs_fuse_direntplus) == 152, "fuse_direntplus");
_Static_assert(sizeof(struct pvfs_fuse_setupmapping_in) == 40, "fuse_setupmapping_in");
_Static_assert(sizeof(struct pvfs_fuse_statx) == 256, "fuse_statx");
_Static_assert(sizeof(struct pvfs_fuse_statx_out) == 288, "fuse_statx_out");

#endif
