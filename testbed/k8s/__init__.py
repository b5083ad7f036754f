"""The Kubernetes side of the lab: what a kubeadm cluster runs around Calico, each an API
client of the lab's API server (testbed.apiserver) through :mod:`testbed.k8s.apiclient`.

- :mod:`testbed.k8s.kubelet` (with :mod:`testbed.k8s.podstatus`, :mod:`testbed.k8s.runtime`,
  :mod:`testbed.k8s.cni`, :mod:`testbed.k8s.images`, :mod:`testbed.k8s.volumes`,
  :mod:`testbed.k8s.staticpods`, :mod:`testbed.k8s.kubeletapi`) - one node's kubelet:
  sandboxes, the CNI chain, volumes, workload processes, pod and node status, static pods,
  the kubelet API (logs, exec, port-forward).
- :mod:`testbed.k8s.controllers` - kube-controller-manager: deployments, replicasets,
  daemonsets, endpoints, endpointslices, node pod CIDRs.
- :mod:`testbed.k8s.scheduler` - kube-scheduler.
- :mod:`testbed.k8s.kubeproxy` - kube-proxy's iptables mode.
- :mod:`testbed.k8s.dns` - the cluster DNS server of the CoreDNS pods.
- :mod:`testbed.k8s.ctr` - the ``ctr`` front end in a node's shell.
- :mod:`testbed.k8s.install` - install Calico by manifest (``kubectl apply -f calico.yaml``).
"""
