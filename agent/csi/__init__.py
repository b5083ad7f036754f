"""Calico's csi-node-driver: the ``csi.tigera.io`` CSI node plugin (:mod:`agent.csi.driver`,
:mod:`agent.csi.node`) and its node-driver-registrar (:mod:`agent.csi.registrar`). See docs/csi.md."""
