"""Boot a throwaway QEMU guest that mounts a virtio-fs share and runs one command.

This is the test harness behind the end-to-end tests, the README demo and the guest benchmark. It
plays no part in the daemon, which never imports it. It is an installed tool
(``pyvirtiofsd-guest``, or ``python -m pyvirtiofsd.guest``) and finds nothing outside its package:
everything it needs is fetched or built on the host by :func:`prepare` into the cache directory
(:func:`cache_dir`: ``$PYVIRTIOFSD_CACHE``, else ``$XDG_CACHE_HOME/pyvirtiofsd``, else
``~/.cache/pyvirtiofsd``; the repository's scripts and tests point it at the repository's
``.cache``) — nothing is installed into the host:

* kernel flavors: ``bookworm`` (Debian 12's ``linux-image-amd64``, 6.1.x, fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x``) and ``sid`` (the kernel inside the sid tree,
  7.x, whose modules are ``.ko.xz``);
* a tiny initramfs per kernel version: static busybox, an ``/init`` script, and just the modules that
  kernel needs for virtio-pci, virtio-fs and 9p, in dependency order;
* a Debian sid tree (``debootstrap``), whose QEMU 11.1 and Rust virtiofsd 1.14 run on this host
  through sid's own dynamic loader (they need a newer glibc than Debian 12's).

It never runs ``sudo``. Two steps need root: ``apt-get update`` (only when apt knows no kernel
package yet) and the sid tree (debootstrap chroots, mounts and makes device nodes). Without root
they stop with :class:`NeedsRoot`, which says what needs root and the command to run (the CLI exits
with :data:`EXIT_NEEDS_ROOT`); everything else runs as any user.

The guest mounts the host's ``/`` read-only over 9p, mounts the virtio-fs tag on a directory of it
(``/mnt`` by default), chroots into it and runs the command, so host programs (python3, fio) run in
the guest against the share. The console carries clear markers (:data:`START_MARKER`,
:data:`EXIT_MARKER`, :data:`ERROR_MARKER`) that :class:`Guest` parses.

Front-ends (the VMM side of the vhost-user socket):

* ``qemu72``: the host's QEMU 7.2 with ``vhost-user-fs-pci``, configured through the repository's
  ``qemu-configs/basic.cfg`` (``-readconfig``), which the package ships as ``basic.cfg``
  (:func:`basic_cfg`); the tag is a QEMU property.
* ``qemu111``: sid's QEMU 11.1 with the generic ``vhost-user-test-device-pci`` (virtio-id 26). This
  device reads the tag from the back-end (GET_CONFIG), so the back-end must be given ``--tag``; it is
  also the one that exposes the back-end's shared-memory regions, i.e. where a ``-o dax`` mount can
  work (``mount_options="dax=always"``).

The back-end stays a parameter: :func:`boot` only needs its socket. :func:`backend_command` and
:class:`Backend` start ours or a reference daemon (C virtiofsd of QEMU 7.2, Rust virtiofsd 1.14)
for one guest — each of them serves a single front-end connection and exits when it hangs up.

Timing under TCG on the 2-core reference machine (a trivial command; see :func:`pvh_image`): QEMU
start → command start ≈ 2.7 s (bookworm 6.1) / 3.8 s (sid 7.2), power-off at ≈ 3 / 4 s. Booting
the compressed bzImage instead costs ≈ 3 s more. First :func:`prepare`: ≈ 10 s for bookworm,
≈ 100 s for the sid tree (debootstrap).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import importlib.resources
import io
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ENV = "PYVIRTIOFSD_CACHE"
EXIT_NEEDS_ROOT = 77  # sysexits.h EX_NOPERM: the CLI's status when a step needs root
HOST_QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: no shared libraries needed in the initramfs

FLAVORS = ("bookworm", "sid")
FRONTENDS = ("qemu72", "qemu111")

# basic.cfg fixes RAM at 1 GiB (QEMU 7.2 cannot -set an [object]); both front-ends use the same.
GUEST_RAM = "1G"
# The kernel command line is at most 2048 bytes on x86; the command travels in it base64-encoded.
MAX_CMDLINE = 2048

START_MARKER = "PVFS-GUEST-START"
EXIT_MARKER = "PVFS-GUEST-EXIT"
ERROR_MARKER = "PVFS-GUEST-ERROR"

# What the guest needs beyond a Debian kernel's built-ins: the virtio PCI transport, virtio-fs (pulls
# fuse) and 9p over virtio (pulls 9pnet, netfs). Dependencies are added from each module's modinfo.
WANTED_MODULES = ("virtio_pci", "virtiofs", "9pnet_virtio", "9p")

SID_PACKAGES = "qemu-system-x86,virtiofsd,linux-image-amd64"
SID_MIRROR = "http://deb.debian.org/debian"
SID_COMPLETE = ".pyvirtiofsd-complete"


class GuestError(RuntimeError):
    """The guest did not run the command to the end. ``console`` holds everything QEMU printed."""

    def __init__(self, message: str, console: str = ""):
        tail = "\n".join(console.splitlines()[-40:])
        super().__init__(f"{message}\n--- console (last lines) ---\n{tail}" if console else message)
        self.console = console


class GuestTimeout(GuestError):
    """The guest ran past its timeout; QEMU was killed."""


class NeedsRoot(RuntimeError):
    """A preparation step needs root and we are not root: the message says what for and which
    command to run (this tool never runs ``sudo`` itself)."""


def cache_dir() -> Path:
    """Where prepared assets live, read at every call (so a test or script may set it late):
    ``$PYVIRTIOFSD_CACHE``, else ``$XDG_CACHE_HOME/pyvirtiofsd``, else ``~/.cache/pyvirtiofsd``
    (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec says)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "pyvirtiofsd"


def sid_dir() -> Path:
    return cache_dir() / "sid"


# The -readconfig file of the qemu72 front-end: package data (see :func:`basic_cfg`).
BASIC_CFG = importlib.resources.files(__name__) / "basic.cfg"


def basic_cfg() -> Path:
    """:data:`BASIC_CFG`, checked: QEMU needs a file it can open."""
    if not isinstance(BASIC_CFG, Path) or not BASIC_CFG.is_file():
        raise RuntimeError(f"{BASIC_CFG}: the package's basic.cfg is missing or not a plain file")
    return BASIC_CFG


def _require_root(what: str, why: str, command: list[str]) -> None:
    """Raise :class:`NeedsRoot` unless we are root."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"{what} needs root ({why}); run as root:\n  {shlex.join(command)}\n"
                        "then run this again")


def _root_prepare_command(flavor: str) -> list[str]:
    """The command that runs ``prepare`` as root on the same cache (sudo resets HOME and the
    environment, so the cache directory travels explicitly)."""
    return ["sudo", "env", f"{CACHE_ENV}={cache_dir()}", sys.executable, "-m", "pyvirtiofsd.guest",
            "prepare", "--flavor", flavor]


def _log(msg: str) -> None:
    print(f"[guest] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a host command, failing loudly with its output (setup steps must not fail silently)."""
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({e.returncode}):\n{e.stdout}{e.stderr}") from e


# --------------------------------------------------------------------------------------------------
# Kernels


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: its image and its ``lib/modules/VERSION`` directory."""

    flavor: str
    version: str  # uname -r
    image: Path
    modules: Path

    @functools.cached_property
    def key(self) -> str:
        """Names this exact kernel in cache file names (a rebuilt package may keep its version)."""
        return f"{self.flavor}-{self.version}-{hashlib.sha256(self.image.read_bytes()).hexdigest()[:10]}"


def _apt_lookup(package: str) -> tuple[str, str]:
    """(name, candidate version) of the kernel image package that ``package`` depends on."""
    for attempt in (1, 2):
        deps = subprocess.run(["apt-cache", "depends", package], text=True, capture_output=True)
        m = re.search(r"Depends: (linux-image-\S+)", deps.stdout)
        if m:
            pkg = m.group(1)
            policy = _run(["apt-cache", "policy", pkg]).stdout
            cand = re.search(r"Candidate: (\S+)", policy)
            if cand and cand.group(1) != "(none)":
                return pkg, cand.group(1)
        if attempt == 1:  # a fresh machine may have no package lists yet
            _require_root("updating the package lists", f"apt-cache does not know {package} yet",
                          ["sudo", "apt-get", "update"])
            _log("apt-cache does not know the kernel package; running apt-get update")
            _run(["apt-get", "update"])
    raise RuntimeError(f"cannot find the kernel package behind {package} with apt-cache")


def bookworm_kernel() -> Kernel:
    """Debian 12's kernel, downloaded (not installed) and unpacked into the cache's ``kernels``."""
    pkg, version = _apt_lookup("linux-image-amd64")
    root = cache_dir() / "kernels" / f"{pkg}_{version}"
    done = root / ".unpacked"
    if not done.exists():
        _log(f"fetching {pkg} {version}")
        if root.exists():
            shutil.rmtree(root)
        dl = root / "deb"
        dl.mkdir(parents=True)
        _run(["apt-get", "download", f"{pkg}={version}"], cwd=dl)
        (deb,) = dl.glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(root / "tree")])
        shutil.rmtree(dl)
        done.touch()
    return _kernel_in(root / "tree", "bookworm")


def _kernel_in(tree: Path, flavor: str) -> Kernel:
    """The single kernel of an unpacked Debian tree."""
    trees = sorted((tree / "lib" / "modules").iterdir())
    if len(trees) != 1:
        raise RuntimeError(f"expected one kernel in {tree}/lib/modules, found {trees}")
    version = trees[0].name
    return Kernel(flavor, version, tree / "boot" / f"vmlinuz-{version}", trees[0])


def sid_kernel() -> Kernel:
    return _kernel_in(prepare_sid(), "sid")


def kernel(flavor: str) -> Kernel:
    if flavor == "bookworm":
        return bookworm_kernel()
    if flavor == "sid":
        return sid_kernel()
    raise ValueError(f"unknown kernel flavor {flavor!r} (expected one of {FLAVORS})")


def pvh_image(kern: Kernel) -> Path:
    """The kernel as an uncompressed ELF ``vmlinux`` that QEMU boots directly (PVH entry point).

    Under TCG, decompressing a bzImage in the guest costs about 3 s of a 6 s boot; QEMU loads an
    ELF kernel with a PVH note as is. The payload sits at a fixed place in the bzImage header
    (Linux boot protocol ≥ 2.08: payload_offset/payload_length). Debian compresses it with xz
    (bookworm; Python's lzma) or zstd (sid; the zstd tool). Kernels without CONFIG_PVH, or a
    payload we cannot decompress, keep the bzImage.
    """
    out = cache_dir() / "vmlinux" / kern.key
    if out.exists():
        return out
    config = kern.image.parent / f"config-{kern.version}"
    bz = kern.image.read_bytes()
    if bz[0x202:0x206] != b"HdrS" or not config.exists() or "CONFIG_PVH=y" not in config.read_text():
        return kern.image
    setup_sects = bz[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bz, 0x248)
    payload = bz[(setup_sects + 1) * 512 + offset:][:length]
    # The build appends the uncompressed size (u32) to the compressed stream.
    stream, (size,) = payload[:-4], struct.unpack("<I", payload[-4:])
    elf = b""
    if stream.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.decompress(stream)
    elif stream.startswith(b"\x28\xb5\x2f\xfd") and shutil.which("zstd"):
        elf = subprocess.run(["zstd", "-dcq"], input=stream, capture_output=True, check=True).stdout
    if len(elf) != size or not elf.startswith(b"\x7fELF"):
        return kern.image
    _replace_cached(out, elf)
    return out


def _replace_cached(out: Path, data: bytes) -> None:
    """Write a cache file atomically, dropping older builds for the same flavor."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{out.name.split('-')[0]}-*"):
        stale.unlink()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(out)


# --------------------------------------------------------------------------------------------------
# Modules: which .ko files, in which order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":  # sid ships .ko.xz; busybox insmod wants plain ELF
        return lzma.decompress(data)
    if path.suffix in (".zst", ".gz"):
        raise RuntimeError(f"{path}: compressed modules other than .xz are not supported")
    return data


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian) as key → value.

    ``depends=`` there is the list modpost computed from the module's undefined symbols — the same
    information depmod writes into modules.dep, which Debian's kernel package does not ship (it is
    generated at install time, and we do not install).
    """
    if elf[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not an ELF64 little-endian file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        if elf[stroff + name:elf.index(b"\0", stroff + name)] == b".modinfo":
            info = {}
            for entry in elf[off:off + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def resolve_modules(kern: Kernel, wanted=WANTED_MODULES) -> list[Path]:
    """Module files to insmod for ``wanted``, dependencies first; built-in modules are left out."""
    builtin = {_module_name(Path(line.strip())) for line in
               (kern.modules / "modules.builtin").read_text().splitlines() if line.strip()}
    files = {_module_name(p): p for p in (kern.modules / "kernel").rglob("*.ko*")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise RuntimeError(f"kernel {kern.version}: module {name} is neither built in nor shipped")
        for dep in filter(None, modinfo(_read_module(files[name])).get("depends", "").split(",")):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


# --------------------------------------------------------------------------------------------------
# Initramfs

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


# --------------------------------------------------------------------------------------------------
# The sid tree (QEMU 11.1, virtiofsd 1.14, a 7.x kernel)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def prepare_sid(directory: Path | None = None) -> Path:
    """Debootstrap Debian sid into ``directory`` (default :func:`sid_dir`) once (a marker file
    records completion).  Needs root, unless the tree is already there."""
    directory = directory or sid_dir()
    if (directory / SID_COMPLETE).exists():
        return directory
    if directory.exists():
        what = f"removing the half-prepared sid tree {directory} (no {SID_COMPLETE}) and redoing it"
    else:
        what = f"the Debian sid tree (debootstrap into {directory})"
    _require_root(what, "debootstrap chroots into the tree, mounts /proc there and makes device "
                  "nodes; a failed attempt leaves root's files and mounts behind",
                  _root_prepare_command("sid"))
    if directory.exists():  # a half-done earlier attempt: debootstrap may have left /proc mounted
        for point in _mounts_under(directory):
            _run(["umount", "-l", point])
        _run(["rm", "-rf", "--one-file-system", str(directory)])
    _log(f"debootstrap sid into {directory} (about a minute, ~800 MB)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _run(["debootstrap", "--variant=minbase", f"--include={SID_PACKAGES}", "sid", str(directory),
          SID_MIRROR])
    version = check_sid_qemu(directory)
    (directory / SID_COMPLETE).write_text(f"{version}\n")
    _log(f"sid tree ready in {time.monotonic() - t0:.0f} s: {version}")
    return directory


def sid_command(binary: str, directory: Path | None = None) -> list[str]:
    """argv prefix that runs a sid binary (e.g. ``usr/libexec/virtiofsd``) on this host via sid's loader."""
    directory = directory or sid_dir()
    libs = f"{directory}/lib/x86_64-linux-gnu:{directory}/usr/lib/x86_64-linux-gnu"
    return [f"{directory}/lib64/ld-linux-x86-64.so.2", "--library-path", libs, f"{directory}/{binary}"]


def sid_env(directory: Path | None = None) -> dict[str, str]:
    """Environment for sid's QEMU: load its own modules, never the host QEMU 7.2's (that aborts)."""
    directory = directory or sid_dir()
    return {**os.environ, "QEMU_MODULE_DIR": f"{directory}/usr/lib/x86_64-linux-gnu/qemu"}


def sid_qemu(directory: Path | None = None) -> list[str]:
    directory = directory or sid_dir()
    return [*sid_command("usr/bin/qemu-system-x86_64", directory),
            "-L", f"{directory}/usr/share/qemu", "-L", f"{directory}/usr/share/seabios"]


def check_sid_qemu(directory: Path | None = None) -> str:
    """Verify sid's QEMU runs here, is 11.1, and has the devices the qemu111 front-end uses."""
    qemu, env = sid_qemu(directory), sid_env(directory)
    version = _run([*qemu, "--version"], env=env).stdout.splitlines()[0]
    if "version 11.1" not in version:
        raise RuntimeError(f"sid QEMU is not 11.1: {version}")
    for device in ("vhost-user-test-device-pci", "virtio-9p-pci"):
        _run([*qemu, "-device", f"{device},help"], env=env)
    return version


# --------------------------------------------------------------------------------------------------
# Assets


@dataclass(frozen=True)
class Assets:
    kernel: Kernel
    initrd: Path
    boot_image: Path  # what -kernel gets: the PVH vmlinux when there is one, else the bzImage


@functools.cache
def prepare(flavor: str = "bookworm") -> Assets:
    """Fetch/build (or reuse) everything a ``flavor`` guest needs; idempotent and cached."""
    kern = kernel(flavor)
    return Assets(kern, build_initramfs(kern), pvh_image(kern))


# --------------------------------------------------------------------------------------------------
# Back-ends (the daemon under test, or a reference one), one per guest: they exit when QEMU hangs up

BACKENDS = ("ours", "c-virtiofsd", "rust-virtiofsd")
C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # QEMU 7.2's C virtiofsd (Debian 12 qemu-system-common)


def backend_command(kind: str, socket: str | os.PathLike, shared_dir: str | os.PathLike,
                    tag: str = "share", *, xattr: bool = False) -> list[str]:
    """argv of a back-end serving ``shared_dir`` on ``socket``, each with equivalent options.

    ``xattr`` turns on extended attributes, which all three daemons leave off by default. The C
    virtiofsd has no ``--tag`` (it cannot answer GET_CONFIG), so it only works with qemu72.
    """
    if kind == "ours":
        return [sys.executable, "-m", "pyvirtiofsd", "--socket-path", str(socket),
                "--shared-dir", str(shared_dir), "--tag", tag, *(["--xattr"] if xattr else [])]
    if kind == "c-virtiofsd":
        return [C_VIRTIOFSD, f"--socket-path={socket}", "-o", f"source={shared_dir}", "-o", "cache=auto",
                *(["-o", "xattr"] if xattr else [])]
    if kind == "rust-virtiofsd":
        return [*sid_command("usr/libexec/virtiofsd"), f"--socket-path={socket}",
                f"--shared-dir={shared_dir}", f"--tag={tag}", "--sandbox=none",
                *(["--xattr"] if xattr else [])]
    raise ValueError(f"unknown back-end {kind!r} (expected one of {BACKENDS})")


def _listening(path: str) -> bool:
    """Is a unix socket listening on ``path``? (/proc/net/unix: flag __SO_ACCEPTCON = 0x10000)"""
    with open("/proc/net/unix") as f:
        next(f)
        return any(len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000
                   for fields in map(str.split, f))


class Backend:
    """A back-end process started from ``argv``; :meth:`start` returns once its socket listens.

    Waiting for the listening state (not just the socket file) avoids QEMU's "connection refused"
    between bind() and listen(); probing with connect() would use up the daemon's only client.
    """

    def __init__(self, argv: list[str], socket: str | os.PathLike, log_path: str | os.PathLike):
        self.argv, self.socket, self.log_path = argv, os.path.abspath(socket), Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Backend":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _listening(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"back-end exited with {self.proc.returncode} before listening on "
                                   f"{self.socket}: {shlex.join(self.argv)}\n{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"back-end not listening on {self.socket} after {timeout} s\n{self.log}")
            time.sleep(0.05)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> "Backend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# Booting


def guest_path(host_path: str | os.PathLike) -> str:
    """Where a host path is seen by the guest's command: the host's / is its root, except that the
    guest has its own /tmp and /run (the host's /tmp is under /run/host-tmp)."""
    path = os.path.abspath(host_path)
    if path == "/tmp" or path.startswith("/tmp/"):
        return "/run/host-tmp" + path[len("/tmp"):]
    if path == "/run" or path.startswith("/run/"):
        raise ValueError(f"{path}: the host's /run is hidden in the guest")
    return path


def kernel_cmdline(command: str, tag: str, mount_point: str, mount_options: str) -> str:
    """The kernel command line carrying the init's parameters (see INIT_SCRIPT)."""
    if not command.strip():
        raise ValueError("an empty command would start an interactive shell; give a command")
    for name, value in (("tag", tag), ("mount_point", mount_point), ("mount_options", mount_options)):
        if re.search(r"\s", value):
            raise ValueError(f"{name} must not contain whitespace: {value!r}")
    parts = ["console=ttyS0", "quiet", "panic=-1", f"pvfs.tag={tag}", f"pvfs.mnt={mount_point}",
             f"pvfs.cmd={base64.b64encode(command.encode()).decode()}"]
    if mount_options:
        parts.append(f"pvfs.opts={mount_options}")
    line = " ".join(parts)
    if len(line) >= MAX_CMDLINE:
        raise ValueError(f"command too long for the kernel command line ({len(line)} bytes); "
                         "put it in a script on the host and run that")
    return line


def qemu_command(frontend: str, assets: Assets, socket: str | os.PathLike, tag: str, *,
                 mount_point: str = "/mnt", mount_options: str = "", command: str = "true",
                 smp: int = 2, queue_size: int | None = None) -> list[str]:
    """The full QEMU argv for ``frontend`` (see the module docstring); the console goes to stdout."""
    if frontend == "qemu72":
        argv = [HOST_QEMU, "-readconfig", str(basic_cfg()),
                "-set", f"chardev.char0.path={socket}", "-set", f"device.vhost-fs.tag={tag}"]
        if queue_size:
            argv += ["-set", f"device.vhost-fs.queue-size={queue_size}"]
    elif frontend == "qemu111":
        prepare_sid()
        device = "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40"
        argv = [*sid_qemu(),
                "-object", f"memory-backend-memfd,id=mem,size={GUEST_RAM},share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=char0,path={socket}",
                "-device", device]
        if queue_size:
            raise ValueError("vhost-user-test-device-pci has no queue-size property")
    else:
        raise ValueError(f"unknown front-end {frontend!r} (expected one of {FRONTENDS})")
    return argv + [
        "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(smp), "-m", GUEST_RAM,
        "-nodefaults", "-display", "none", "-no-reboot",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-kernel", str(assets.boot_image), "-initrd", str(assets.initrd),
        "-append", kernel_cmdline(command, tag, mount_point, mount_options),
    ]


@dataclass
class GuestResult:
    """What a finished guest run left: the command's exit status and everything on the console."""

    exit_status: int
    console: str
    boot_seconds: float  # QEMU start → the command starts (kernel, modules, mounts)
    total_seconds: float  # QEMU start → QEMU exit

    @property
    def output(self) -> str:
        """The command's own output: the console between the start and exit markers."""
        lines = self.console.splitlines()
        start = next((i for i, l in enumerate(lines) if l.startswith(START_MARKER)), -1)
        end = next((i for i, l in enumerate(lines) if l.startswith(EXIT_MARKER)), len(lines))
        return "\n".join(lines[start + 1:end])

    def check(self) -> "GuestResult":
        if self.exit_status != 0:
            raise GuestError(f"guest command exited with status {self.exit_status}", self.console)
        return self


@dataclass
class Guest:
    """One QEMU guest that mounts ``tag`` from the back-end on ``socket`` and runs ``command``.

    ``command`` is a shell command line run by ``/bin/sh`` in the chroot of the host's root, with the
    share mounted at ``mount_point`` (also the working directory). Use :meth:`start` + :meth:`wait`,
    or :func:`boot` for both. ``echo`` copies the console to stderr live; ``console_path`` keeps a log.
    """

    command: str
    socket: str | os.PathLike
    tag: str = "share"
    frontend: str = "qemu72"
    flavor: str = "bookworm"
    mount_point: str = "/mnt"
    mount_options: str = ""
    smp: int = 2
    queue_size: int | None = None
    echo: bool = False
    console_path: str | os.PathLike | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _lines: list[str] = field(default_factory=list, repr=False)
    _started_at: float = 0.0
    _command_at: float | None = None

    def start(self) -> "Guest":
        assets = prepare(self.flavor)
        argv = qemu_command(self.frontend, assets, self.socket, self.tag, mount_point=self.mount_point,
                            mount_options=self.mount_options, command=self.command, smp=self.smp,
                            queue_size=self.queue_size)
        env = sid_env() if self.frontend == "qemu111" else None
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def _read_console(self) -> None:
        log = open(self.console_path, "w") if self.console_path else None
        try:
            for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                if line.startswith(START_MARKER) and self._command_at is None:
                    self._command_at = time.monotonic()
                self._lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if self.echo:
                    print(line, file=sys.stderr, flush=True)
        finally:
            if log:
                log.close()

    @property
    def console(self) -> str:
        return "\n".join(self._lines)

    def kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def wait(self, timeout: float = 300) -> GuestResult:
        """Wait for QEMU to exit; kill it after ``timeout`` seconds and raise :class:`GuestTimeout`."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._reader.join(5)
            raise GuestTimeout(f"guest still running after {timeout} s; QEMU killed", self.console)
        self._reader.join(5)
        total = time.monotonic() - self._started_at
        console = self.console
        for line in self._lines:
            if line.startswith(ERROR_MARKER):
                raise GuestError(f"guest init failed: {line[len(ERROR_MARKER):].strip()}", console)
        exits = [l for l in self._lines if l.startswith(EXIT_MARKER)]
        if not exits:
            raise GuestError(f"guest ended without {EXIT_MARKER} (QEMU exit status "
                             f"{self._proc.returncode})", console)
        boot = (self._command_at or self._started_at) - self._started_at
        return GuestResult(int(exits[-1].split()[1]), console, boot, total)

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def boot(command: str, socket: str | os.PathLike, *, timeout: float = 300, **options) -> GuestResult:
    """Boot a guest, run ``command`` in it, and return its :class:`GuestResult` (see :class:`Guest`)."""
    with Guest(command, socket, **options) as guest:
        return guest.wait(timeout)


# --------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None, prog: str = "pyvirtiofsd-guest") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog=f"Assets are cached in {cache_dir()} (${CACHE_ENV}, else $XDG_CACHE_HOME/pyvirtiofsd, "
               f"else ~/.cache/pyvirtiofsd).  Nothing runs sudo: a step that needs root stops with "
               f"exit status {EXIT_NEEDS_ROOT} and the command to run as root.")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="download/build the guest assets (idempotent)")
    p.add_argument("--flavor", choices=[*FLAVORS, "all"], default="all")
    r = sub.add_parser("run", help="boot a guest against a back-end and run a command in it",
                       description="Either connect to a running back-end (--socket) or start one "
                                   "(--backend with --shared-dir) for this one guest.")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--socket", help="the vhost-user socket of a running back-end")
    which.add_argument("--backend", choices=BACKENDS, help="start this back-end for the guest")
    r.add_argument("--shared-dir", help="with --backend: the directory to serve")
    r.add_argument("--tag", default="share")
    r.add_argument("--frontend", choices=FRONTENDS, default="qemu72")
    r.add_argument("--flavor", choices=FLAVORS, default="bookworm")
    r.add_argument("--mount-point", default="/mnt", help="an existing directory of the host's / ")
    r.add_argument("--mount-options", default="", help="virtiofs mount options, e.g. dax=always")
    r.add_argument("--smp", type=int, default=2)
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("command", nargs="+", help="the command (after --) run in the guest by /bin/sh")
    args = parser.parse_args(argv)

    if args.action == "prepare":
        try:
            for flavor in FLAVORS if args.flavor == "all" else (args.flavor,):
                t0 = time.monotonic()
                assets = prepare(flavor)
                print(f"{flavor}: kernel {assets.kernel.version} ({assets.boot_image}), "
                      f"initrd {assets.initrd} [{time.monotonic() - t0:.1f} s]")
            if args.flavor in ("all", "sid"):
                print(f"sid: {check_sid_qemu()}")
        except NeedsRoot as e:
            print(f"[guest] {e}", file=sys.stderr)
            return EXIT_NEEDS_ROOT
        return 0

    if args.backend and not args.shared_dir:
        parser.error("--backend needs --shared-dir")
    command = args.command[0] if len(args.command) == 1 else shlex.join(args.command)
    options = dict(tag=args.tag, frontend=args.frontend, flavor=args.flavor, mount_point=args.mount_point,
                   mount_options=args.mount_options, smp=args.smp, timeout=args.timeout, echo=True)
    try:
        if args.socket:
            result = boot(command, args.socket, **options)
        else:
            result = _run_with_backend(command, args.backend, args.shared_dir, options)
    except NeedsRoot as e:
        print(f"[guest] {e}", file=sys.stderr)
        return EXIT_NEEDS_ROOT
    except (GuestError, RuntimeError) as e:
        print(f"[guest] {e}" if not isinstance(e, GuestError) else f"[guest] {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 125
    print(f"[guest] exit status {result.exit_status}; boot {result.boot_seconds:.1f} s, "
          f"total {result.total_seconds:.1f} s", file=sys.stderr)
    return result.exit_status


def _run_with_backend(command: str, kind: str, shared_dir: str, options: dict) -> GuestResult:
    """``run --backend``: a back-end in a temporary directory, for one guest, then stopped."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pyvirtiofsd-run-") as tmp:
        socket = os.path.join(tmp, "vhost-user.sock")
        argv = backend_command(kind, socket, os.path.abspath(shared_dir), options["tag"])
        _log(f"back-end: {shlex.join(argv)}")
        backend = Backend(argv, socket, os.path.join(tmp, "backend.log"))
        with backend:
            result = boot(command, socket, **options)
        status = backend.proc.returncode
        _log(f"back-end stopped (exit status {status}); the end of its log:")
        print("\n".join(backend.log.splitlines()[-8:]), file=sys.stderr)
        return result
