"""Guest kernels (Debian 12's, or the sid tree's) and the modules each needs, in load order."""

from __future__ import annotations

import functools
import hashlib
import lzma
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import FLAVORS, WANTED_MODULES, _log, _require_root, _run, cache_dir
from .sid import prepare_sid


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


