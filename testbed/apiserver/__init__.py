"""calicolab's Kubernetes API server (``python -m testbed.apiserver``): HTTPS over the
/registry store in etcd. See docs/apiserver.md."""
