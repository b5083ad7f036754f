"""A small Kubernetes API client (stdlib only, fast to import): kubeconfig and
in-cluster config, typed errors, CRUD/patch/apply, list (paged) and watch, and a
list+watch informer. See docs/apiserver.md ("kubeclient").

    from kubeclient import Client
    c = Client.from_config()                      # $KUBECONFIG, ~/.kube/config or in-cluster
    pods = c.list("v1", "pods", "default")["items"]
"""

from kubeclient.client import Client, Watch, resource_path
from kubeclient.config import Config, from_kubeconfig, in_cluster, load
from kubeclient.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    TooLarge,
    Unauthorized,
)
from kubeclient.informer import Informer, key_of

__all__ = ["AlreadyExists", "ApiError", "BadRequest", "Client", "Config", "ConfigError", "Conflict",
           "ConnectionFailed", "Forbidden", "Gone", "Informer", "Invalid", "KubeError", "NotFound", "TooLarge",
           "Unauthorized", "Watch", "from_kubeconfig", "in_cluster", "key_of", "load", "resource_path"]
