"""Calico v3.28.1's own manifests, obtained on demand and verified, never shipped.

The seeds' users download Calico's ``calico.yaml`` (manifest install) or
``tigera-operator.yaml`` + ``custom-resources.yaml`` (operator install) from Calico's
repository. calicolab does not copy them into its tree; :func:`path` returns one of
them by file name (``manifests/<name>`` at tag ``v3.28.1``), checked against the sha256
pinned in :data:`PINS`, from the first source that has it:

1. ``$CALICOLAB_UPSTREAM_DIR/<name>`` (a directory the user filled, e.g. offline);
2. the cache ``.cache/upstream/v3.28.1/<name>`` (what an earlier call or
   ``scripts/setup.sh`` stored);
3. a local git clone or mirror of projectcalico/calico (``$CALICOLAB_CALICO_GIT``, default
   :data:`DEFAULT_GIT_DIRS`), ``git show v3.28.1:manifests/<name>``;
4. a download from ``https://raw.githubusercontent.com/projectcalico/calico/v3.28.1/manifests/<name>``.

A file found with another hash is refused, naming the source and both hashes (a source
that has the wrong file is an error, not a fallback). What a source other than the cache
gives is stored in the cache. When no source has it :class:`Unavailable` says what each
source answered.

CLI: ``python -m testbed.k8s.upstream [--quiet] [NAME ...]`` prints the paths (default: every pinned file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VERSION = "v3.28.1"
#: sha256 of Calico v3.28.1's manifests/<name> (the blob at the tag, byte for byte)
PINS: dict[str, str] = {
    "calico.yaml": "3349111bfb38ded7c5ddd60018aa1d36f315c4a64902e1c18adba632634c5cf7",
    "tigera-operator.yaml": "6281081448f411fbfc95661c75bcf51f461b56b8de230e3234366128f81888e2",
    "custom-resources.yaml": "4043b5053798754892df9a994324aa45c4296ae6c2d7d2d7a4f91971acab5032",
}
URL = "https://raw.githubusercontent.com/projectcalico/calico/{version}/manifests/{name}"
ENV_DIR = "CALICOLAB_UPSTREAM_DIR"
ENV_GIT = "CALICOLAB_CALICO_GIT"
#: where a mirror of projectcalico/calico may already be (this project's development machines)
DEFAULT_GIT_DIRS = ("/work/.mirror/projectcalico+calico/repo",)
DOWNLOAD_TIMEOUT = 20.0


class UpstreamError(Exception):
    """An upstream manifest is unknown, unavailable, or not the pinned file."""


class Unavailable(UpstreamError):
    """No source has the file; ``tried`` lists what each source answered."""

    def __init__(self, name: str, tried: list[str]):
        self.name, self.tried = name, tried
        super().__init__(f"Calico {VERSION} manifests/{name} is not available here: " + "; ".join(tried))


class Mismatch(UpstreamError):
    """A source has a file of that name whose sha256 is not the pinned one."""


def cache_dir() -> Path:
    """``.cache/upstream/<version>`` of the checkout."""
    return REPO / ".cache" / "upstream" / VERSION


def sha256(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def verify(name: str, data: bytes, source: str) -> bytes:
    """``data`` if its sha256 is the pin of ``name``; else :class:`Mismatch` naming ``source``."""
    want = pin(name)
    got = sha256(data)
    if got != want:
        raise Mismatch(f"{source}: sha256 {got} is not Calico {VERSION} manifests/{name}'s {want}")
    return data


def pin(name: str) -> str:
    """The pinned sha256 of ``name``; :class:`UpstreamError` for a file that has none."""
    try:
        return PINS[name]
    except KeyError:
        raise UpstreamError(f"no pinned Calico {VERSION} manifest named {name!r} "
                            f"(pinned: {', '.join(sorted(PINS))})") from None


def _git_dirs(env: dict[str, str]) -> list[str]:
    given = env.get(ENV_GIT)
    return [given] if given else list(DEFAULT_GIT_DIRS)


def _from_git(git_dir: str, name: str) -> bytes:
    proc = subprocess.run(["git", "--git-dir", git_dir, "show", f"{VERSION}:manifests/{name}"],
                          capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise OSError(proc.stderr.decode(errors="replace").strip() or f"git exited {proc.returncode}")
    return proc.stdout


def _download(name: str, timeout: float) -> bytes:
    url = URL.format(version=VERSION, name=name)
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a fixed https URL)
        return resp.read()


def _store(name: str, data: bytes) -> Path:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    out = d / name
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def path(name: str, env: dict[str, str] | None = None, download: bool = True,
         timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """The local path of Calico's ``manifests/<name>`` at v3.28.1, verified (see the module
    docstring for the sources and their order). Raises :class:`Unavailable` when no source
    has it, :class:`Mismatch` when one has another file, :class:`UpstreamError` for a name
    without a pin."""
    pin(name)
    env = dict(os.environ) if env is None else env
    tried: list[str] = []
    given = env.get(ENV_DIR)
    if given:
        p = Path(given) / name
        if p.is_file():
            verify(name, p.read_bytes(), str(p))
            return p
        tried.append(f"{ENV_DIR}: no file {p}")
    else:
        tried.append(f"{ENV_DIR} not set")
    cached = cache_dir() / name
    if cached.is_file():
        data = cached.read_bytes()
        if sha256(data) == PINS[name]:
            return cached
        tried.append(f"cache {cached}: sha256 {sha256(data)} is not the pin (ignored, replaced if found)")
    else:
        tried.append(f"no cache file {cached}")
    for git_dir in _git_dirs(env):
        if not os.path.isdir(git_dir):
            tried.append(f"no git clone at {git_dir}")
            continue
        try:
            data = _from_git(git_dir, name)
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"git {git_dir}: {exc}")
            continue
        return _store(name, verify(name, data, f"git {git_dir} {VERSION}:manifests/{name}"))
    if download:
        url = URL.format(version=VERSION, name=name)
        try:
            data = _download(name, timeout)
        except (OSError, urllib.error.URLError) as exc:
            tried.append(f"download {url}: {getattr(exc, 'reason', None) or exc}")
        else:
            return _store(name, verify(name, data, url))
    else:
        tried.append("download not attempted")
    raise Unavailable(name, tried)


def text(name: str, **kwargs: object) -> str:
    """The content of :func:`path` ``(name)`` as text."""
    return path(name, **kwargs).read_text()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Print the local path of each named (default: every pinned) manifest; exit 1 if any is missing."""
    ap = argparse.ArgumentParser(prog="python -m testbed.k8s.upstream", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"file names under manifests/ (default: {', '.join(PINS)})")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = ap.parse_args(argv)
    rc = 0
    for name in args.names or list(PINS):
        try:
            p = path(name)
        except UpstreamError as exc:
            print(f"upstream: {exc}", file=sys.stderr)
            rc = 1
            continue
        if not args.quiet:
            print(p)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
