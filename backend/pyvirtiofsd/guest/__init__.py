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

The parts, each building on the ones before: ``common`` (constants, errors, the cache),
``sid`` (the sid tree), ``kernels`` (kernels and their modules), ``initramfs``, ``assets``
(:func:`prepare`), ``backends``, ``boot`` (:class:`Guest`, :func:`boot`) and ``cli``.
"""

from __future__ import annotations

# Their public names are the package's.
from .common import (  # noqa: F401
    BASIC_CFG, BUSYBOX, CACHE_ENV, ERROR_MARKER, EXIT_MARKER, EXIT_NEEDS_ROOT, FLAVORS, FRONTENDS, GUEST_RAM, HOST_QEMU, MAX_CMDLINE, START_MARKER, GuestError, GuestTimeout, NeedsRoot, basic_cfg, cache_dir, sid_dir,
)
from .kernels import (  # noqa: F401
    Kernel, bookworm_kernel, kernel, modinfo, pvh_image, resolve_modules, sid_kernel,
)
from .initramfs import (  # noqa: F401
    INIT_SCRIPT, build_initramfs,
)
from .sid import (  # noqa: F401
    check_sid_qemu, prepare_sid, sid_command, sid_env, sid_qemu,
)
from .assets import (  # noqa: F401
    Assets, prepare,
)
from .backends import (  # noqa: F401
    BACKENDS, C_VIRTIOFSD, Backend, backend_command,
)
from .boot import (  # noqa: F401
    Guest, GuestResult, boot, guest_path, kernel_cmdline, qemu_command,
)
from .cli import (  # noqa: F401
    main,
)
