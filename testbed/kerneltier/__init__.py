"""The kernel tier: run selected tests inside a stock Debian kernel under qemu (TCG).

The machines this project runs on have a kernel without ``ipip``, so the agent's
kernel ``tunl0`` path is exercised inside a guest booted from Debian's own
``linux-image-*-amd64`` package.  Modules:

- :mod:`testbed.kerneltier.fetch` - download and cache the guest kernel (``apt-get download``).
- :mod:`testbed.kerneltier.cpio` - a pure newc cpio writer (no kernel side effects).
- :mod:`testbed.kerneltier.initramfs` - build (and cache) the guest's initramfs.
- :mod:`testbed.kerneltier.qemu` - boot the guest, run one script, read the results share.
- :mod:`testbed.kerneltier.results` - read junit.xml verdicts written by the guest.
- :mod:`testbed.kerneltier.cluster` - nodes, tunl0, routes and pods in namespaces (used inside
  the guest with the kernel tunnel and on the host with the userspace one).
"""
