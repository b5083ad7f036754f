"""Where the API server is and how to authenticate: a kubeconfig file ($KUBECONFIG or
~/.kube/config) or the in-cluster config (the ServiceAccount token mount and
KUBERNETES_SERVICE_HOST/PORT), as client-go loads them."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from typing import Any

from kubeclient.errors import ConfigError

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Config:
    """Connection settings for one API server (a plain class: dataclasses cost ~13 ms to import)."""

    def __init__(self, server: str, ca_data: bytes | None = None, ca_file: str | None = None,
                 cert_data: bytes | None = None, key_data: bytes | None = None, cert_file: str | None = None,
                 key_file: str | None = None, token: str | None = None, token_file: str | None = None,
                 insecure: bool = False, namespace: str = "default", timeout: float = 30.0,
                 user_agent: str = "kubeclient/python", extra: dict[str, Any] | None = None):
        self.server, self.ca_data, self.ca_file = server, ca_data, ca_file
        self.cert_data, self.key_data, self.cert_file, self.key_file = cert_data, key_data, cert_file, key_file
        self.token, self.token_file = token, token_file  # token_file is re-read as it rotates (in-cluster)
        self.insecure, self.namespace, self.timeout, self.user_agent = insecure, namespace, timeout, user_agent
        self.extra = extra or {}

    def __repr__(self) -> str:
        return f"Config(server={self.server!r}, namespace={self.namespace!r})"

    def bearer(self) -> str | None:
        """The bearer token to send (re-reading ``token_file``)."""
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip()
            except OSError:
                pass
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context verifying the server and presenting the client cert, if any.

        The server is verified against the kubeconfig's CA alone when it names one (as
        client-go does); the machine's trust store is loaded only when it names none (that
        load costs ~80 ms of CPU in every process that makes a client)."""
        if self.insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_data.decode())
        elif self.ca_file:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            # ssl loads client certs from files only: write them to a private temp dir, load, remove
            with tempfile.TemporaryDirectory(prefix="kubeclient-") as d:
                c, k = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
                for path, data in ((c, self.cert_data), (k, self.key_data)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                ctx.load_cert_chain(c, k)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def _load_doc(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml  # a YAML kubeconfig (as kubectl writes it)
        except ImportError:
            raise ConfigError(f"{path} is YAML and PyYAML is not installed") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"kubeconfig {path} does not parse: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    return doc


def _named(items: list[dict] | None, name: str, what: str, path: str) -> dict:
    for it in items or []:
        if it.get("name") == name:
            return it.get(what) or {}
    raise ConfigError(f'kubeconfig {path}: no {what} named "{name}"')


def _rel(base: str, p: str | None) -> str | None:
    if not p:
        return None
    return p if os.path.isabs(p) else os.path.join(os.path.dirname(os.path.abspath(base)), p)


def from_kubeconfig(path: str | None = None, context: str | None = None) -> Config:
    """Load a kubeconfig (``path``, else the first file of $KUBECONFIG, else ~/.kube/config)."""
    if path is None:
        env = os.environ.get("KUBECONFIG")
        path = env.split(os.pathsep)[0] if env else os.path.expanduser("~/.kube/config")
    doc = _load_doc(path)
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise ConfigError(f"kubeconfig {path} has no current-context")
    ctx = _named(doc.get("contexts"), ctx_name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    unsupported = [k for k in ("exec", "auth-provider", "username") if user.get(k)]
    if unsupported:
        raise ConfigError(f"kubeconfig {path}: user auth by {', '.join(unsupported)} is not supported "
                          "(client certificates and tokens are)")

    def data(key: str) -> bytes | None:
        v = cluster.get(key) if key.startswith("certificate-authority") else user.get(key)
        return base64.b64decode(v) if v else None

    tf = _rel(path, user.get("tokenFile"))
    return Config(server=cluster["server"].rstrip("/"), ca_data=data("certificate-authority-data"),
                  ca_file=_rel(path, cluster.get("certificate-authority")),
                  cert_data=data("client-certificate-data"), key_data=data("client-key-data"),
                  cert_file=_rel(path, user.get("client-certificate")), key_file=_rel(path, user.get("client-key")),
                  token=user.get("token"), token_file=tf, insecure=bool(cluster.get("insecure-skip-tls-verify")),
                  namespace=ctx.get("namespace") or "default")


def in_cluster(sa_dir: str = SA_DIR) -> Config:
    """The in-cluster config: KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount mount."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
    token = os.path.join(sa_dir, "token")
    if not os.path.exists(token):
        raise ConfigError(f"not in a cluster: no ServiceAccount token at {token}")
    ns = "default"
    try:
        with open(os.path.join(sa_dir, "namespace")) as f:
            ns = f.read().strip() or "default"
    except OSError:
        pass
    if ":" in host:
        host = f"[{host}]"
    return Config(server=f"https://{host}:{port}", ca_file=os.path.join(sa_dir, "ca.crt"), token_file=token,
                  namespace=ns)


def load(path: str | None = None, context: str | None = None) -> Config:
    """A kubeconfig when one is given or exists, else the in-cluster config."""
    if path or os.environ.get("KUBECONFIG"):
        return from_kubeconfig(path, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return from_kubeconfig(None, context)
