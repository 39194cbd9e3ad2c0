#!/usr/bin/env bash
# pyvirtiofsd in one minute: serve ./share to a QEMU guest and use it from inside the guest.
#
#   scripts/demo.sh
#
# Sets up what is missing (scripts/setup.sh --flavor bookworm), creates ./share with a hello file if
# there is none, starts the back-end on it, boots a Debian 12 guest (QEMU 7.2, vhost-user-fs-pci,
# TCG — about 10 s), lists the share, writes a file, reads it back, shows the kernel, the mount and
# a stat, powers the guest off, stops the back-end, and shows from the host what the guest wrote.
#
# PYVIRTIOFSD_DEMO_BACKEND=c-virtiofsd|rust-virtiofsd uses a reference daemon instead of ours.
set -euo pipefail
cd "$(dirname "$0")/.."
# The guest runner's cache: the repository's .cache (scripts/setup.sh fills it).
export PYVIRTIOFSD_CACHE=${PYVIRTIOFSD_CACHE:-$PWD/.cache}

backend=${PYVIRTIOFSD_DEMO_BACKEND:-ours}
share=$PWD/share
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup (only what is missing)"
scripts/setup.sh --flavor bookworm

if [ ! -d "$share" ]; then
    mkdir -p "$share"
    echo "Hello from the host, $(date -u +%F)." > "$share/hello.txt"
    echo "created $share with hello.txt"
fi

# What the guest runs (as root, in a chroot of the host's / with the share at /mnt, its cwd).
read -r -d '' guest_script <<'EOF' || true
set -e
echo "--- uname -r:        $(uname -r)"
echo "--- mount | grep virtiofs:"; mount | grep virtiofs
echo "--- ls -la /mnt:";   ls -la /mnt
echo "--- hello.txt:";     cat /mnt/hello.txt || echo "(no hello.txt)"
echo "Written by the guest running $(uname -r) at $(date -u +%T)." > /mnt/from-guest.txt
echo "--- read back:";     cat /mnt/from-guest.txt
echo "--- stat:";          stat /mnt/from-guest.txt
EOF

step "boot a guest; the $backend back-end serves $share (tag 'share')"
[ "$backend" != ours ] || echo "(our daemon not ready? PYVIRTIOFSD_DEMO_BACKEND=c-virtiofsd $0 uses the C virtiofsd)"
# `run --backend` starts the daemon for this one guest, waits for its socket, boots QEMU with
# qemu-configs/basic.cfg (shipped in the package), and stops the daemon again after the guest
# powered off.
status=0
.venv/bin/python -m pyvirtiofsd.guest run --backend "$backend" --shared-dir "$share" --tag share \
    --frontend qemu72 --flavor bookworm -- "$guest_script" || status=$?

step "back on the host: $share"
ls -la "$share"
if [ -f "$share/from-guest.txt" ]; then
    echo "--- cat share/from-guest.txt"
    cat "$share/from-guest.txt"
fi
if [ "$status" -ne 0 ]; then
    echo "the guest run failed (status $status)"
    [ "$backend" = ours ] && echo "is our daemon ready yet? try PYVIRTIOFSD_DEMO_BACKEND=c-virtiofsd $0"
fi
exit "$status"
