"""The Kubernetes version the lab runs: what the API server reports and the kubelets and
kube-proxies say they are (``kubectl get nodes`` VERSION). The installed kubectl's, so the
client and the cluster are within the supported skew."""

KUBE_VERSION = "v1.37.1"
