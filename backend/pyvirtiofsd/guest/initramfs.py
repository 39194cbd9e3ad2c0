"""The guest's initramfs: static busybox, the /init script and the kernel's modules."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from .common import BUSYBOX, _log, cache_dir
from .kernels import Kernel, _module_name, _read_module, _replace_cached, resolve_modules


# PID 1 of the guest (busybox ash). Parameters come from the kernel command line:
#   pvfs.tag=TAG  pvfs.mnt=/mnt  pvfs.opts=MOUNT_OPTIONS  pvfs.cmd=BASE64(shell command)
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "PVFS-GUEST: $*"; }
fail() {
    echo "PVFS-GUEST-ERROR $*"
    dmesg | tail -n 20
    poweroff -f
}

TAG=share MNT=/mnt OPTS= CMD=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pvfs.tag=*) TAG="${arg#pvfs.tag=}" ;;
        pvfs.mnt=*) MNT="${arg#pvfs.mnt=}" ;;
        pvfs.opts=*) OPTS="${arg#pvfs.opts=}" ;;
        pvfs.cmd=*) CMD="$(echo "${arg#pvfs.cmd=}" | base64 -d)" || fail "bad pvfs.cmd" ;;
    esac
done

for m in $(cat /modules.load); do
    insmod "/lib/modules/$m" || fail "insmod $m"
done

# The host's / (read-only 9p) becomes the command's root, so host programs run in the guest.
# Without it (no -virtfs ...,mount_tag=hostroot) the command runs in the initramfs: busybox only.
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot 2>/dev/null; then
    R=/newroot
else
    say "no 9p tag hostroot: busybox only"
    R=
    mkdir -p "$MNT" /tmp
fi
mount -t virtiofs ${OPTS:+-o "$OPTS"} "$TAG" "$R$MNT" || fail "mount -t virtiofs $TAG $MNT ${OPTS} failed"
say "virtiofs tag $TAG mounted at $MNT ${OPTS:+(-o $OPTS)}"
if [ -n "$R" ]; then
    mount -t proc proc $R/proc
    mount -t sysfs sysfs $R/sys
    mount -t devtmpfs devtmpfs $R/dev
    mkdir -p $R/dev/pts $R/dev/shm
    mount -t devpts devpts $R/dev/pts
    mount -t tmpfs tmpfs $R/dev/shm
    mount -t tmpfs tmpfs $R/run
    mkdir -p $R/run/host-tmp
    mount --bind $R/tmp $R/run/host-tmp  # the host's /tmp stays reachable under the guest's own /tmp
    mount -t tmpfs -o mode=1777 tmpfs $R/tmp
fi
[ -n "$CMD" ] || { say "no pvfs.cmd: interactive shell, exit to power off"; CMD="exec /bin/sh -i"; }

echo "PVFS-GUEST-START"
${R:+chroot $R} /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb PVFS_MOUNT="$MNT" PVFS_CMD="$CMD" \
    /bin/sh -c 'cd "$PVFS_MOUNT" && eval "$PVFS_CMD"'
echo "PVFS-GUEST-EXIT $?"
cd /
sync
umount "$R$MNT" || say "umount of $MNT failed"
poweroff -f
"""


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive (the initramfs format) of (name, mode, data, rdev) entries."""
    out = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-out.tell() % 4) + data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def build_initramfs(kern: Kernel) -> Path:
    """Build (or reuse) the initramfs for ``kern``; the cache key covers kernel, init and busybox."""
    modules = resolve_modules(kern)
    busybox = BUSYBOX.read_bytes()
    key = hashlib.sha256()
    for part in (kern.key.encode(), INIT_SCRIPT.encode(), busybox, *(str(m).encode() for m in modules)):
        key.update(hashlib.sha256(part).digest())
    out = cache_dir() / "initramfs" / f"{kern.flavor}-{kern.version}-{key.hexdigest()[:12]}.cpio"
    if out.exists():
        return out
    dirs = ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "usr", "usr/bin"]
    entries = [(d, 0o40755, b"", 0) for d in dirs]
    entries.append(("dev/console", 0o20600, b"", (5 << 8) | 1))
    entries.append(("bin/busybox", 0o100755, busybox, 0))
    entries.append(("usr/bin/env", 0o120777, b"/bin/busybox", 0))  # same env path as in the chroot
    entries.append(("init", 0o100755, INIT_SCRIPT.encode(), 0))
    names = []
    for m in modules:
        names.append(_module_name(m) + ".ko")
        entries.append((f"lib/modules/{names[-1]}", 0o100644, _read_module(m), 0))
    entries.append(("modules.load", 0o100644, "".join(n + "\n" for n in names).encode(), 0))
    _replace_cached(out, _cpio_newc(entries))
    _log(f"built {out.name}: modules {' '.join(names) or '(all built in)'}")
    return out


