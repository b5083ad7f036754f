"""testbed/k8s/upstream.py: Calico's manifests by name, verified against the pinned sha256
(sources: $CALICOLAB_UPSTREAM_DIR, the cache, a git clone, a download). Pure: temporary
directories, a throw-away git repository, the download replaced."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from testbed.k8s import upstream

pytestmark = pytest.mark.unit
DATA = b"kind: ConfigMap\n"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A pinned test file, an empty cache and no download (unless a test sets one)."""
    monkeypatch.setitem(upstream.PINS, "test.yaml", SHA)
    monkeypatch.setattr(upstream, "cache_dir", lambda: tmp_path / "cache")

    def no_network(name, timeout):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(upstream, "_download", no_network)
    return tmp_path


def _env(tmp_path, **extra):
    return {upstream.ENV_GIT: str(tmp_path / "no-git"), **extra}


def test_pins_name_the_seed_files():
    assert set(upstream.PINS) >= {"calico.yaml", "tigera-operator.yaml", "custom-resources.yaml"}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in upstream.PINS.values())
    with pytest.raises(upstream.UpstreamError, match=r"no pinned Calico v3.28.1 manifest named 'calico-bpf.yaml'"):
        upstream.path("calico-bpf.yaml", env={})


def test_from_user_dir_verified(sandbox):
    d = sandbox / "given"
    d.mkdir()
    (d / "test.yaml").write_bytes(DATA)
    assert upstream.path("test.yaml", env=_env(sandbox, CALICOLAB_UPSTREAM_DIR=str(d))) == d / "test.yaml"
    (d / "test.yaml").write_bytes(DATA + b"# edited\n")
    with pytest.raises(upstream.Mismatch, match=rf"{d}/test.yaml: sha256 [0-9a-f]{{64}} is not .*'?s {SHA}"):
        upstream.path("test.yaml", env=_env(sandbox, CALICOLAB_UPSTREAM_DIR=str(d)))


def test_unavailable_says_what_each_source_answered(sandbox):
    with pytest.raises(upstream.Unavailable) as err:
        upstream.path("test.yaml", env=_env(sandbox))
    msg = str(err.value)
    assert "CALICOLAB_UPSTREAM_DIR not set" in msg
    assert "no cache file" in msg and "no git clone at" in msg
    assert "download https://raw.githubusercontent.com/projectcalico/calico/v3.28.1/manifests/test.yaml: " \
           "network unreachable (test)" in msg


def test_download_is_verified_then_cached(sandbox, monkeypatch):
    got = []
    monkeypatch.setattr(upstream, "_download", lambda name, timeout: got.append(name) or DATA)
    p = upstream.path("test.yaml", env=_env(sandbox))
    assert p == sandbox / "cache" / "test.yaml" and p.read_bytes() == DATA
    assert upstream.path("test.yaml", env=_env(sandbox)) == p and got == ["test.yaml"]  # the cache answers
    monkeypatch.setattr(upstream, "_download", lambda name, timeout: b"<html>captive portal</html>")
    p.write_bytes(b"truncated")
    with pytest.raises(upstream.Mismatch, match="raw.githubusercontent.com"):
        upstream.path("test.yaml", env=_env(sandbox))
    assert p.read_bytes() == b"truncated"  # nothing unverified stored


def test_from_git_tag(sandbox, monkeypatch):
    git = sandbox / "calico"
    run = lambda *a: subprocess.run(["git", "-C", str(git), *a], check=True, capture_output=True)  # noqa: E731
    git.mkdir()
    run("init", "-q")
    (git / "manifests").mkdir()
    (git / "manifests" / "test.yaml").write_bytes(DATA)
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    run("tag", "v3.28.1")
    p = upstream.path("test.yaml", env={upstream.ENV_GIT: str(git / ".git")})
    assert p.read_bytes() == DATA and p.parent == sandbox / "cache"
    monkeypatch.setitem(upstream.PINS, "other.yaml", SHA)
    with pytest.raises(upstream.Unavailable, match=r"git .*other.yaml"):
        upstream.path("other.yaml", env={upstream.ENV_GIT: str(git / ".git")}, download=False)
