"""Everything one guest flavor needs, prepared once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .kernels import Kernel, kernel, pvh_image
from .initramfs import build_initramfs


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


