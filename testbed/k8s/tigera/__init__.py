"""calicolab's Tigera operator (image ``tigera/operator``): it reconciles the Installation
``default`` into namespace calico-system and reports each component in a TigeraStatus, as
tigera/operator v1.34.3 does for Calico v3.28.1 (docs/install.md says what it does and what
it does not).

- :mod:`testbed.k8s.tigera.installation` - Installation defaults, validation, pools (pure)
- :mod:`testbed.k8s.tigera.status` - TigeraStatus conditions (pure)
- :mod:`testbed.k8s.tigera.render` - calico-system from manifests/calico-system.yaml
- :mod:`testbed.k8s.tigera.controller` - the reconcile loop (``python -m testbed.k8s.tigera``)
"""
