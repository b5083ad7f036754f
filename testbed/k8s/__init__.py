"""The Kubernetes side of the lab: what a kubeadm cluster runs around Calico.

- :mod:`testbed.k8s.model`, :mod:`testbed.k8s.errors`, :mod:`testbed.k8s.store`,
  :mod:`testbed.k8s.informer` - Kubernetes kinds, their validation and their storage in etcd.
- :mod:`testbed.k8s.controllers` - deployments, replicasets, daemonsets, scheduler, endpoints.
- :mod:`testbed.k8s.kubelet` (with :mod:`testbed.k8s.podstatus`, :mod:`testbed.k8s.runtime`,
  :mod:`testbed.k8s.cni`, :mod:`testbed.k8s.images`) - one node's kubelet: sandboxes, the CNI
  chain, workload processes, pod and node status.
- :mod:`testbed.k8s.kubeproxy` - kube-proxy's iptables mode.
- :mod:`testbed.k8s.printers` - kubectl's output formats.
- :mod:`testbed.k8s.ctr` - the ``ctr`` front end in a node's shell.
- :mod:`testbed.k8s.install` - install Calico by manifest (``kubectl apply -f calico.yaml``).
"""
