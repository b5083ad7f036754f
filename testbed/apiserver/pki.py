"""A lab's PKI, made as kubeadm makes it: CA, API server serving cert, admin client cert,
ServiceAccount signing key pair; and the admin kubeconfig.

Layout written by :func:`write_pki` (kubeadm's names, under e.g. ``/etc/kubernetes/pki``)::

    ca.crt ca.key                      cluster CA (CN=kubernetes)
    apiserver-kubelet-client.crt/.key  the API server's client cert towards kubelets
    apiserver.crt apiserver.key        serving cert, SANs below
    admin.crt admin.key                client cert CN=kubernetes-admin, O=system:masters
    sa.key sa.pub                      ServiceAccount token signing key pair (RSA)

and :func:`write_kubeconfig` writes ``admin.conf`` (certs embedded as base64 data).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_IP = "10.96.0.1"
"""The ``kubernetes`` Service's ClusterIP: the first address of 10.96.0.0/12."""

DNS_SANS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local")


@dataclass
class Pki:
    """Paths of one PKI directory (as written by :func:`write_pki`)."""

    dir: str

    def path(self, name: str) -> str:
        """The file ``name`` in the PKI directory."""
        return os.path.join(self.dir, name)

    @property
    def ca_crt(self) -> str:
        return self.path("ca.crt")

    @property
    def ca_key(self) -> str:
        return self.path("ca.key")

    @property
    def serving_crt(self) -> str:
        return self.path("apiserver.crt")

    @property
    def serving_key(self) -> str:
        return self.path("apiserver.key")

    @property
    def admin_crt(self) -> str:
        return self.path("admin.crt")

    @property
    def admin_key(self) -> str:
        return self.path("admin.key")

    @property
    def sa_key(self) -> str:
        return self.path("sa.key")

    @property
    def sa_pub(self) -> str:
        return self.path("sa.pub")


def _key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def make_ca(days: int = 3650, ecdsa: bool = False) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed cluster CA (CN=kubernetes), as kubeadm's (RSA 2048, or P-256 with ``ecdsa``)."""
    key = _ec_key() if ecdsa else _key()
    name = _name("kubernetes")
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=not ecdsa, key_cert_sign=True,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, cn: str, *, orgs: tuple[str, ...] = (),
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False,
          client: bool = False, days: int = 365, ecdsa: bool = False
          ) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA (serving and/or client usage); ``ecdsa``: a P-256
    key (as the kubelet's own certificates), else RSA 2048 (kubeadm's)."""
    key = _ec_key() if ecdsa else _key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn, orgs)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=not ecdsa, key_cert_sign=False,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def serving_sans(node_name: str, node_ips: list[str] | tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (DNS, IP) SANs of the API server cert: kubeadm's names plus the node's."""
    dns = (*DNS_SANS, node_name, "localhost")
    ips = tuple(dict.fromkeys((SERVICE_IP, "127.0.0.1", *node_ips)))
    return dns, ips


def write_pki(directory: str, node_name: str = "control-plane", node_ips: list[str] | tuple[str, ...] = (),
              force: bool = False, ecdsa: bool = False) -> Pki:
    """Make the PKI in ``directory`` (kept if it exists and ``force`` is false). Returns its paths.
    ``ecdsa``: the certificates' keys are P-256 (kubeadm's ``encryptionAlgorithm: ECDSA-P256``,
    ~50x faster to make than RSA 2048); the ServiceAccount signing key stays RSA (RS256 tokens)."""
    pki = Pki(directory)
    if not force and all(os.path.exists(p) for p in (pki.ca_crt, pki.serving_crt, pki.admin_crt, pki.sa_key)):
        return pki
    os.makedirs(directory, exist_ok=True)
    ca, ca_key = make_ca(ecdsa=ecdsa)
    dns, ips = serving_sans(node_name, node_ips)
    srv, srv_key = issue(ca, ca_key, "kube-apiserver", dns=dns, ips=ips, server=True, ecdsa=ecdsa)
    adm, adm_key = issue(ca, ca_key, "kubernetes-admin", orgs=("system:masters",), client=True, ecdsa=ecdsa)
    kcl, kcl_key = issue(ca, ca_key, "kube-apiserver-kubelet-client", orgs=("kubeadm:cluster-admins",), client=True,
                         ecdsa=ecdsa)
    sa = _key()
    files = {
        "ca.crt": _pem_cert(ca), "ca.key": _pem_key(ca_key),
        "apiserver.crt": _pem_cert(srv), "apiserver.key": _pem_key(srv_key),
        "admin.crt": _pem_cert(adm), "admin.key": _pem_key(adm_key),
        "apiserver-kubelet-client.crt": _pem_cert(kcl), "apiserver-kubelet-client.key": _pem_key(kcl_key),
        "sa.key": _pem_key(sa),
        "sa.pub": sa.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, data in files.items():
        path = os.path.join(directory, name)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name.endswith(".key") else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return pki


def load_ca(pki: Pki) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The CA certificate and key of ``pki``."""
    with open(pki.ca_crt, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(pki.ca_key, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    return ca, ca_key  # type: ignore[return-value]


def issue_client(pki: Pki, cn: str, orgs: tuple[str, ...] = (), ecdsa: bool = False,
                 ca: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None) -> tuple[bytes, bytes]:
    """A client cert/key (PEM) for user ``cn`` in groups ``orgs``, signed by the lab CA
    (what a kubelet or controller would get as its credentials). ``ca``: the loaded CA
    (:func:`load_ca`), to issue many without reading it again."""
    ca_cert, ca_key = ca or load_ca(pki)
    cert, key = issue(ca_cert, ca_key, cn, orgs=orgs, client=True, ecdsa=ecdsa)
    return _pem_cert(cert), _pem_key(key)


def self_signed_serving(cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
                        days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed serving cert/key (PEM, ECDSA P-256), as a kubelet makes for its
    :10250 endpoint when no serving certificate is given (``<node>-ca@<time>`` issuer)."""
    key = _ec_key()
    now = _now()
    name = _name(cn)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(_name(f"{cn}-ca@{int(now.timestamp())}"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _pem_cert(builder.sign(key, hashes.SHA256())), _pem_key(key)


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None,
               token: str | None = None, user: str = "kubernetes-admin", cluster: str = "kubernetes") -> dict:
    """A kubeconfig document (as kubeadm's admin.conf) for ``server`` with embedded credentials."""
    creds: dict[str, str] = {}
    if cert_pem is not None and key_pem is not None:
        creds["client-certificate-data"] = base64.b64encode(cert_pem).decode()
        creds["client-key-data"] = base64.b64encode(key_pem).decode()
    if token is not None:
        creds["token"] = token
    context = f"{user}@{cluster}"
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }


def write_kubeconfig(path: str, pki: Pki, server: str) -> str:
    """Write the admin kubeconfig (``/etc/kubernetes/admin.conf``) for ``server``; returns ``path``."""
    import json

    with open(pki.ca_crt, "rb") as f:
        ca = f.read()
    with open(pki.admin_crt, "rb") as f:
        crt = f.read()
    with open(pki.admin_key, "rb") as f:
        key = f.read()
    doc = kubeconfig(server, ca, crt, key)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        # JSON is YAML: kubectl and every client read it.
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.apiserver.pki DIR [--node-name N] [--node-ip IP]... [--kubeconfig PATH --server URL]``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m testbed.apiserver.pki", allow_abbrev=False,
                                description="make a lab's kubeadm-style PKI (and admin kubeconfig)")
    p.add_argument("dir")
    p.add_argument("--node-name", default="control-plane")
    p.add_argument("--node-ip", action="append", default=[])
    p.add_argument("--force", action="store_true", help="replace an existing PKI")
    p.add_argument("--kubeconfig", help="also write the admin kubeconfig here (needs --server)")
    p.add_argument("--server", help="the API server URL for the kubeconfig (https://IP:6443)")
    a = p.parse_args(argv)
    if a.kubeconfig and not a.server:
        p.error("--kubeconfig needs --server")
    pki = write_pki(a.dir, a.node_name, a.node_ip, a.force)
    if a.kubeconfig:
        write_kubeconfig(a.kubeconfig, pki, a.server)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
