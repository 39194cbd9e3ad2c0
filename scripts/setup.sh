#!/usr/bin/env bash
# Set up a machine for pyvirtiofsd development and its end-to-end tests. Idempotent: re-running
# only does what is missing.
#
#   scripts/setup.sh [--flavor bookworm|sid|all]     (default all)
#
# 1. Debian packages (apt-get, as root or through sudo): QEMU 7.2 + the C virtiofsd, static busybox
#    for the guest initramfs, debootstrap for the sid tree, the host python3 the guest runs, fio.
# 2. .venv with `pip install -e '.[test,plot]'` (again only when pyproject.toml/setup.py changed).
# 3. Guest assets under .cache/: `python -m pyvirtiofsd.guest prepare --flavor FLAVOR` (Debian 12
#    kernel, Debian sid tree with QEMU 11.1 + virtiofsd 1.14 + a 7.x kernel, initramfs images).
#    The sid tree needs root (debootstrap): not being root, the guest runner stops, and this
#    script runs it again through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
# The guest runner's cache (default ~/.cache/pyvirtiofsd): the repository's .cache, which the
# tests, the demo and CI use too, unless the caller chose another.
export PYVIRTIOFSD_CACHE=${PYVIRTIOFSD_CACHE:-$PWD/.cache}

flavor=all
while [ $# -gt 0 ]; do
    case $1 in
        --flavor) flavor=$2; shift 2 ;;
        --flavor=*) flavor=${1#--flavor=}; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo

packages=(
    qemu-system-x86 qemu-system-common  # QEMU 7.2 (front-end qemu72) and /usr/lib/qemu/virtiofsd
    busybox-static                     # the guest's /init and tools, no shared libraries needed
    debootstrap                        # the Debian sid tree (QEMU 11.1, virtiofsd 1.14, 7.x kernel)
    python3 python3-venv               # the guest runs the host's /usr/bin/python3 (guest_checks.py)
    gcc python3-dev libffi-dev         # building the cffi extension
    libseccomp-dev strace              # the seccomp filter (C extension); scripts/gen-seccomp.py
    zstd                               # unpacks the sid kernel for a direct (PVH) boot, ~3 s faster
    fio attr acl util-linux cpio xz-utils  # the guest benchmark; xattr/ACL tools; setpriv, runuser
    uidmap passwd                      # rootless tests: newuidmap/newgidmap; useradd, usermod
    systemd libvirt-clients libxml2-utils  # qemu-configs/ checks: systemd-analyze verify,
                                           # systemd-socket-activate, virt-xml-validate (xmllint)
    prometheus                         # e2e: a real Prometheus scrapes --metrics-address
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($py --version)"
    "$py" -m venv .venv
fi
stamp=.venv/.pyvirtiofsd-installed
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import pyvirtiofsd" 2>/dev/null; then
    echo "setup: pip install -e '.[test,plot]'"
    .venv/bin/python -m pip install -q --upgrade pip
    # build.lock: the same lock scripts/build-ext.sh takes, so two builds never overwrite each other.
    flock build.lock .venv/bin/python -m pip install -q -e '.[test,plot]'
    echo "$want" > "$stamp"
fi
# Byte-compile the package as pip does for a non-editable install: a daemon that compiles its
# modules at every start (an editable install, with PYTHONDONTWRITEBYTECODE set as on CI
# machines) starts slower and keeps ~0.5 MiB more of the compiler's leftovers.
.venv/bin/python -m compileall -q backend/pyvirtiofsd >/dev/null

prepare=(.venv/bin/python -m pyvirtiofsd.guest prepare --flavor "$flavor")
status=0
"${prepare[@]}" || status=$?
if [ "$status" -eq 77 ] && [ -n "$sudo" ]; then  # 77: a step needs root (it said which above)
    echo "setup: running the guest runner's prepare again through sudo"
    $sudo env PYVIRTIOFSD_CACHE="$PYVIRTIOFSD_CACHE" "${prepare[@]}"
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
