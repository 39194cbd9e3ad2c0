#!/usr/bin/env bash
# Boot a QEMU 7.2 guest with a virtio-fs device from qemu-configs/basic.cfg.
#
#   qemu-configs/run-guest.sh [-s SOCKET] [-t TAG] -k KERNEL -i INITRD [-a APPEND] [-- EXTRA QEMU ARGS]
#
# Environment instead of options: SOCKET, TAG, KERNEL, INITRD, APPEND, QEMU (default
# qemu-system-x86_64). A vhost-user back-end must already listen on SOCKET, e.g.
#   python -m pyvirtiofsd --socket-path /tmp/vfs.sock --shared-dir ./share --tag share
#   /usr/lib/qemu/virtiofsd --socket-path=/tmp/vfs.sock -o source=./share
# The console is this terminal (serial on stdio; Ctrl-A X quits). To get a kernel and an initramfs
# that mount the tag, run `python -m pyvirtiofsd.guest prepare --flavor bookworm`, or let
# `python -m pyvirtiofsd.guest run` do all of this for you (it uses the same basic.cfg).  Its
# assets go to $PYVIRTIOFSD_CACHE, else $XDG_CACHE_HOME/pyvirtiofsd (the repository's scripts
# set PYVIRTIOFSD_CACHE=.cache).
#
# What basic.cfg can and cannot hold (QEMU 7.2 -readconfig): [object], [numa], [chardev], [device],
# [machine], [accel], [memory], [smp-opts], [fsdev], [global], [name], [rtc], [boot-opts], [action]
# are accepted; there is no [serial], [display] or [cpu] section, values have no variables, and
# `-set` overrides only QemuOpts groups (chardev, device, ...), not objects — hence RAM is fixed at
# 1 GiB in the file and per-run values (socket, tag) are passed with -set below.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SOCKET=${SOCKET:-/tmp/pyvirtiofsd.sock} TAG=${TAG:-share} KERNEL=${KERNEL:-} INITRD=${INITRD:-}
APPEND=${APPEND:-console=ttyS0 quiet} QEMU=${QEMU:-qemu-system-x86_64}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while getopts "s:t:k:i:a:h" opt; do
    case $opt in
        s) SOCKET=$OPTARG ;; t) TAG=$OPTARG ;; k) KERNEL=$OPTARG ;; i) INITRD=$OPTARG ;;
        a) APPEND=$OPTARG ;; h) usage 0 ;; *) usage 2 >&2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
[ -n "$KERNEL" ] && [ -n "$INITRD" ] || { echo "run-guest.sh: a kernel (-k) and an initrd (-i) are needed" >&2; usage 2 >&2; }
[ -S "$SOCKET" ] || { echo "run-guest.sh: no back-end socket at $SOCKET" >&2; exit 2; }

exec "$QEMU" -readconfig "$here/basic.cfg" \
    -set "chardev.char0.path=$SOCKET" -set "device.vhost-fs.tag=$TAG" \
    -accel tcg,thread=multi -cpu max -smp 2 -m 1G \
    -nodefaults -display none -no-reboot -serial mon:stdio \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" \
    "$@"
