"""calico-kube-controllers for the etcd datastore: the ``node`` controller and IPAM GC.

``python -m agent.kubecontrollers`` (see :mod:`agent.kubecontrollers.main`). The
decisions are pure (:mod:`.config`, :mod:`.nodes`, :mod:`.gc`); :mod:`.controller`
reads Kubernetes objects from ``/registry/...`` in the same etcd and applies them
with the datastore and IPAM libraries.
"""
