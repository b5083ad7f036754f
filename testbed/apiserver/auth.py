"""Authentication: client certificates (CN = user, O = groups) and ServiceAccount tokens
(JWTs signed RS256 with the lab's ``sa.key``, as kube-apiserver's bound tokens).

Authorization: every authenticated user may do everything (RBAC objects are stored,
not enforced; docs/apiserver.md says so).
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://kubernetes.default.svc.cluster.local"


@dataclass
class User:
    """An authenticated user (user.Info)."""

    name: str
    groups: list[str] = field(default_factory=list)
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kid(pub_pem: bytes) -> str:
    import hashlib

    pub = serialization.load_pem_public_key(pub_pem)
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64url(hashlib.sha256(der).digest())


@functools.lru_cache(maxsize=4)
def signing_key(key_pem: bytes) -> tuple[Any, str]:
    """The private key of ``key_pem`` and its key ID, loaded once: loading an RSA key checks
    it (``RSA_check_key``, tens of ms of CPU on the API server's event loop), and every
    TokenRequest (one per pod with a projected token) signs with the same key."""
    key = serialization.load_pem_private_key(key_pem, None)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, _kid(pub_pem)


def sign_token(key_pem: bytes, namespace: str, sa_name: str, sa_uid: str = "", *,
               expiration: int = 3607 * 24 * 365, audiences: list[str] | None = None,
               pod: dict | None = None, node: dict | None = None, now: float | None = None) -> str:
    """A ServiceAccount token (JWT RS256) as kube-apiserver's TokenRequest makes it."""
    key, kid = signing_key(key_pem)
    t = int(now if now is not None else time.time())
    k8s: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": sa_name, "uid": sa_uid}}
    if pod:
        k8s["pod"] = pod
    if node:
        k8s["node"] = node
    claims = {"aud": audiences or [AUDIENCE], "exp": t + expiration, "iat": t, "iss": ISSUER,
              "jti": str(uuid.uuid4()), "kubernetes.io": k8s, "nbf": t,
              "sub": f"system:serviceaccount:{namespace}:{sa_name}"}
    header = {"alg": "RS256", "kid": kid}
    signing = f"{_b64url(json.dumps(header, separators=(',', ':')).encode())}." \
              f"{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return f"{signing}.{_b64url(sig)}"


class TokenError(Exception):
    """A bearer token that does not authenticate."""


class TokenVerifier:
    """Verifies ServiceAccount JWTs with the lab's ``sa.pub``.

    A token whose signature verified is remembered (its claims, the last ``CACHED`` tokens):
    clients send the same token with every request, and the RSA check cost ~0.2 ms of the
    API server's CPU each time (kube-apiserver likewise caches successful token
    authentications). Issuer, audience and the time bounds are checked on every call."""

    CACHED = 4096

    def __init__(self, pub_pem: bytes):
        self.pub = serialization.load_pem_public_key(pub_pem)
        self._signed: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The token's claims, or :class:`TokenError`."""
        claims = self._signed.get(token)
        if claims is None:
            claims = self._check_signature(token)
            self._signed[token] = claims
            if len(self._signed) > self.CACHED:
                self._signed.popitem(last=False)
        else:
            self._signed.move_to_end(token)
        claims = dict(claims)
        t = now if now is not None else time.time()
        if claims.get("iss") != ISSUER:
            raise TokenError("invalid issuer")
        if "exp" in claims and t > claims["exp"]:
            raise TokenError("token has expired")
        if "nbf" in claims and t + 60 < claims["nbf"]:
            raise TokenError("token not yet valid")
        aud = claims.get("aud") or []
        if AUDIENCE not in (aud if isinstance(aud, list) else [aud]):
            raise TokenError("token audience is not accepted")
        return claims

    def _check_signature(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWT")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            sig = _unb64url(parts[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenError(f"malformed token: {exc}") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError("malformed token: header and claims must be JSON objects")
        if header.get("alg") != "RS256":
            raise TokenError(f"unsupported signing algorithm {header.get('alg')!r}")
        try:
            self.pub.verify(sig, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
        except InvalidSignature:
            raise TokenError("invalid signature") from None
        return claims


def user_from_claims(claims: dict[str, Any]) -> User:
    """The user a ServiceAccount token authenticates as."""
    k8s = claims.get("kubernetes.io") or {}
    ns = k8s.get("namespace", "")
    sa = (k8s.get("serviceaccount") or {})
    extra = {}
    if k8s.get("pod"):
        extra["authentication.kubernetes.io/pod-name"] = [k8s["pod"].get("name", "")]
        extra["authentication.kubernetes.io/pod-uid"] = [k8s["pod"].get("uid", "")]
    return User(f"system:serviceaccount:{ns}:{sa.get('name', '')}",
                ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                sa.get("uid", ""), extra)


def user_from_peercert(cert: dict[str, Any] | None) -> User | None:
    """The user of a verified TLS client certificate (``ssl.SSLSocket.getpeercert()`` form)."""
    if not cert:
        return None
    cn, orgs = None, []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
            elif k == "organizationName":
                orgs.append(v)
    if not cn:
        return None
    return User(cn, orgs + ["system:authenticated"])
