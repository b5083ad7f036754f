"""Vagrant for real: a Debian 12 box built here from Debian packages, libvirt under TCG.

- :mod:`testbed.vagrant.box` - build the libvirt box with debootstrap (cached by its inputs).
- :mod:`testbed.vagrant.libvirt` - the libvirt daemons, the pool and the leftovers check.
- :mod:`testbed.vagrant.run` - ``vagrant up`` / demo inside / ``vagrant destroy``, timed.
"""
