"""calico-kube-controllers for the etcd datastore: the ``node`` controller and IPAM GC.

``python -m agent.kubecontrollers`` (see :mod:`agent.kubecontrollers.main`). The
decisions are pure (:mod:`.config`, :mod:`.decisions`); :mod:`.controller` and
:mod:`.objects` read Kubernetes objects through the Kubernetes API (:mod:`.kubesource`)
and apply them with the datastore and IPAM libraries.
"""
