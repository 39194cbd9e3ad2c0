#!/usr/bin/env bash
# Start pyvirtiofsd and a QEMU guest for one of the ready setups in qemu-configs/.
#
#   qemu-configs/launch.sh SETUP -d SHARED_DIR -k KERNEL -i INITRD [-s SOCKET] [-t TAG]
#                          [-a APPEND] [-- EXTRA QEMU ARGS]
#   qemu-configs/launch.sh --check SETUP -d SHARED_DIR [-s SOCKET] [-t TAG]
#
# SETUP       QEMU config        back-end options
#   basic       basic.cfg          (none)
#   hugepages   hugepages.cfg      (none; needs 512 free 2 MiB pages and /dev/hugepages)
#   multiqueue  multiqueue.cfg     --num-request-queues 4          (and -smp 4)
#   readonly    readonly.cfg       --readonly                      (tag share-ro)
#   dax         dax.cfg            --tag TAG --cache-size 1G       (QEMU >= 11.1)
#
# The back-end starts first, in the background (its log: SOCKET.log); QEMU follows once the
# socket listens, with the serial console on this terminal (Ctrl-A X quits). When QEMU exits
# the back-end sees the hang-up and exits too. --check boots nothing: QEMU starts paused,
# connects to the back-end, prints the virtio-fs device's properties and quits -- a quick
# test that QEMU accepts the config and talks to the back-end.
#
# Environment: PYVIRTIOFSD (back-end command, default: pyvirtiofsd, else python3 -m
# pyvirtiofsd), BACKEND_ARGS (more back-end options), QEMU (QEMU command, default
# qemu-system-x86_64), ACCEL (default kvm when /dev/kvm is usable, else tcg; plain tcg
# picks one thread or several by SMP), SMP, APPEND.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "launch.sh: $*" >&2; exit 2; }

check=no
[ "${1:-}" = "--check" ] && { check=yes; shift; }
[ $# -gt 0 ] || usage 2 >&2
case ${1:-} in -h|--help) usage 0 ;; esac
setup=$1; shift
SHARED_DIR= SOCKET=/tmp/pyvirtiofsd-$setup.sock TAG= KERNEL= INITRD=
APPEND=${APPEND:-console=ttyS0}
while getopts "d:s:t:k:i:a:h" opt; do
    case $opt in
        d) SHARED_DIR=$OPTARG ;; s) SOCKET=$OPTARG ;; t) TAG=$OPTARG ;; k) KERNEL=$OPTARG ;;
        i) INITRD=$OPTARG ;; a) APPEND=$OPTARG ;; h) usage 0 ;; *) usage 2 >&2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift

smp=${SMP:-2} backend_opts=() set_tag=yes
case $setup in
    basic) TAG=${TAG:-share} ;;
    hugepages)
        TAG=${TAG:-share}
        grep -qs '^[^ ]* /dev/hugepages hugetlbfs ' /proc/mounts ||
            die "hugetlbfs is not mounted on /dev/hugepages (mount -t hugetlbfs hugetlbfs /dev/hugepages)"
        free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
        [ "${free:-0}" -ge 512 ] ||
            die "$free free huge pages, the 1G guest needs 512 (echo 512 > /proc/sys/vm/nr_hugepages)" ;;
    multiqueue) TAG=${TAG:-share}; backend_opts=(--num-request-queues 4); smp=${SMP:-4} ;;
    readonly) TAG=${TAG:-share-ro}; backend_opts=(--readonly) ;;
    dax) TAG=${TAG:-share}; backend_opts=(--tag "$TAG" --cache-size 1G); set_tag=no ;;
    *) die "unknown setup '$setup' (basic, hugepages, multiqueue, readonly, dax)" ;;
esac
config=$here/$setup.cfg
[ -n "$SHARED_DIR" ] && [ -d "$SHARED_DIR" ] || die "a shared directory is needed (-d DIR)"
if [ $check = no ]; then
    [ -n "$KERNEL" ] && [ -n "$INITRD" ] || die "a kernel (-k) and an initrd (-i) are needed"
fi

if [ -n "${PYVIRTIOFSD:-}" ]; then read -r -a backend <<< "$PYVIRTIOFSD"
elif command -v pyvirtiofsd >/dev/null; then backend=(pyvirtiofsd)
else backend=(python3 -m pyvirtiofsd)
fi
read -r -a qemu <<< "${QEMU:-qemu-system-x86_64}"
read -r -a extra_backend <<< "${BACKEND_ARGS:-}"
if [ -z "${ACCEL:-}" ]; then
    if [ -w /dev/kvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
# More vCPUs than host cores under multi-threaded TCG: a vCPU thread preempted while the guest
# kernel patches its text (a static key flipping at boot) can run a stale int3 after the patch
# is done, and the guest panics ("Oops: int3" in sched_clock_cpu, seen in CI with a 7.2 guest
# and -smp 4 on 2 cores). One TCG thread runs the vCPUs in turn: no such race.
if [ "$ACCEL" = tcg ]; then
    if [ "$smp" -gt "$(nproc)" ]; then ACCEL=tcg,thread=single; else ACCEL=tcg,thread=multi; fi
fi
if [ "$setup" = dax ]; then
    version=$("${qemu[@]}" --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r major minor <<< "$version"
    [ "${major:-0}" -gt 11 ] || { [ "${major:-0}" -eq 11 ] && [ "${minor:-0}" -ge 1 ]; } ||
        die "the dax setup needs QEMU >= 11.1 (${qemu[*]} is ${major:-?}.${minor:-?}); set QEMU"
fi

# --- the back-end -------------------------------------------------------------------------
log=$SOCKET.log
"${backend[@]}" --socket-path "$SOCKET" --shared-dir "$SHARED_DIR" "${backend_opts[@]}" \
    "${extra_backend[@]}" > "$log" 2>&1 &
backend_pid=$!
cleanup() { kill "$backend_pid" 2>/dev/null || true; }
trap cleanup EXIT
# Listening, not just bound: /proc/net/unix flags 00010000 (__SO_ACCEPTCON) on our path.
listening() { awk -v p="$SOCKET" '$4 == "00010000" && $8 == p {f = 1} END {exit !f}' /proc/net/unix; }
for _ in $(seq 300); do
    listening && break
    kill -0 "$backend_pid" 2>/dev/null || { cat "$log" >&2; die "the back-end exited (log: $log)"; }
    sleep 0.05
done
listening || die "the back-end does not listen on $SOCKET"

# --- QEMU --------------------------------------------------------------------------------
args=(-readconfig "$config" -set "chardev.char0.path=$SOCKET")
[ $set_tag = yes ] && args+=(-set "device.vhost-fs.tag=$TAG")
args+=(-accel "$ACCEL" -cpu max -smp "$smp" -m 1G -nodefaults -display none)
if [ $check = yes ]; then
    out=$(printf 'info qtree\nquit\n' | "${qemu[@]}" "${args[@]}" -S -monitor stdio "$@" 2>&1) ||
        { echo "$out" >&2; die "QEMU refused the $setup setup"; }
    # The PCI proxy's memory BARs (with dax: the cache window), then the virtio device's
    # properties: vhost-user-fs-device (7.2) or vhost-user-test-device (11.1).
    echo "$out" | tr -d '\r' | awk '
        /dev: vhost-user-(fs|test-device)-pci,/ {proxy = 1}
        proxy && /bar [0-9]: mem/ {print "pci " $0}
        /dev: vhost-user-(fs|test)-device,/ {p = 1; print; next}
        p && /^ *(dev|bus): / {p = 0; proxy = 0}
        p' | sed 's/^ *//; s/^pci */pci /'
    echo "$out" | grep -Eq 'dev: vhost-user-(fs|test)-device,' || die "no virtio-fs device in QEMU"
    wait "$backend_pid" || die "the back-end failed (log: $log)"
    exit 0
fi
status=0
"${qemu[@]}" "${args[@]}" -no-reboot -serial mon:stdio \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" "$@" || status=$?
# The back-end exits on the hang-up; give it a moment before the trap ends it.
for _ in $(seq 50); do kill -0 "$backend_pid" 2>/dev/null || break; sleep 0.1; done
exit $status
