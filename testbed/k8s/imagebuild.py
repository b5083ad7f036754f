"""Container images built locally from the machine's Debian packages (no registry).

Each image is a docker-archive tarball (``manifest.json``, an image config and one layer)
that both ``ctr images import`` and Docker's ``images.load`` accept. A layer holds the
programs the image is about, every shared library ``ldd`` says they load, the busybox-static
applets as the userland (``sh``, ``ps``, ``cat``, ``env`` ...), and the files they need
(nginx's configuration, an ``/etc/passwd``). The layout is Debian's merged ``/usr``
(``/bin -> usr/bin``, ``/lib -> usr/lib`` ...), so the paths ``ldd`` prints resolve inside.

=====================================  ==================================================
image                                  built from
=====================================  ==================================================
``calicolab/nginx:<Debian version>``   nginx-light (access log on stdout, error log on
                                       stderr, as the nginx image does), curl, busybox
``calicolab/busybox:<version>``        busybox-static
``calicolab/tools:<busybox version>``  curl, iproute2's ``ip``, tcpdump, busybox
``calicolab/pause:<busybox version>``  busybox ``sleep infinity`` (the pod sandbox)
=====================================  ==================================================

The tag is the version of the package the image is about, so ``nginx -v`` in a pod says
what the image holds. :func:`spec_for` maps the names a manifest uses (``nginx``,
``nginx:1.25``, ``docker.io/library/nginx:latest``) to these; the kubelet reports the
built reference in ``containerStatuses[].image`` so the substitution is visible.
Archives are cached under ``<cache>/images/`` by a digest of what went in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
#: merged-/usr symlinks every image carries
USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
NSS_LIBS = ("/usr/lib/x86_64-linux-gnu/libnss_files.so.2", "/usr/lib/x86_64-linux-gnu/libnss_dns.so.2")
PASSWD = ("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"

NGINX_CONF = """\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" "$http_user_agent"';
    access_log /dev/stdout main;
    sendfile on;
    server {
        listen 80 default_server;
        server_name _;
        root /usr/share/nginx/html;
        index index.html;
    }
}
"""

NGINX_INDEX = """<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
<p>calicolab image built from Debian's nginx-light.</p>
</body>
</html>
"""


class ImageBuildError(Exception):
    """An image could not be built from this machine's files (a package is missing)."""


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image."""

    name: str  # repository, e.g. calicolab/nginx
    package: str  # the Debian package whose version is the tag
    binaries: tuple[str, ...] = ()  # absolute paths, copied with their ldd closure
    files: dict[str, str] = field(default_factory=dict)  # path in image -> text
    copies: dict[str, str] = field(default_factory=dict)  # path in image -> file on the machine
    dirs: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    ports: tuple[int, ...] = ()
    stop_signal: str = "SIGTERM"


def _base_files() -> dict[str, str]:
    return {"etc/passwd": PASSWD, "etc/group": GROUP, "etc/nsswitch.conf": NSSWITCH,
            "etc/hostname": "", "etc/hosts": "127.0.0.1\tlocalhost\n", "etc/resolv.conf": ""}


SPECS: dict[str, ImageSpec] = {
    "nginx": ImageSpec(
        "calicolab/nginx", "nginx-light", ("/usr/sbin/nginx", "/usr/bin/curl"),
        files={"etc/nginx/nginx.conf": NGINX_CONF, "usr/share/nginx/html/index.html": NGINX_INDEX},
        copies={"etc/nginx/mime.types": "/etc/nginx/mime.types"},
        dirs=("var/lib/nginx", "var/log/nginx", "run", "var/www"),
        cmd=("nginx", "-g", "daemon off;"), ports=(80,), stop_signal="SIGQUIT"),
    "busybox": ImageSpec("calicolab/busybox", "busybox-static"),
    "tools": ImageSpec("calicolab/tools", "busybox-static", ("/usr/bin/curl", "/usr/bin/ip", "/usr/bin/tcpdump"),
                       cmd=("sleep", "infinity")),
    "pause": ImageSpec("calicolab/pause", "busybox-static", cmd=("sleep", "infinity"), stop_signal="SIGKILL"),
}

#: repository names a manifest may use (registry and tag dropped) -> SPECS key
ALIASES: dict[str, str] = {
    "nginx": "nginx", "library/nginx": "nginx", "nginxinc/nginx-unprivileged": "nginx",
    "busybox": "busybox", "library/busybox": "busybox",
    "nicolaka/netshoot": "tools", "netshoot": "tools", "curlimages/curl": "tools", "tools": "tools",
    "pause": "pause", "k8s.gcr.io/pause": "pause",
}


def repository_path(image: str) -> str:
    """``docker.io/library/nginx:1.25`` -> ``library/nginx``; ``nginx`` -> ``nginx`` (pure)."""
    name = image.split("@", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    parts[-1] = parts[-1].split(":", 1)[0]
    return "/".join(parts)


def spec_for(image: str) -> ImageSpec | None:
    """The built image a manifest's ``image`` runs, or None (pure)."""
    path = repository_path(image)
    if path.startswith("calicolab/"):
        key = path.split("/", 1)[1]
        return SPECS.get(key)
    return SPECS.get(ALIASES.get(path, ""))


def package_version(package: str) -> str:
    """The installed Debian version, upstream part only (``1:1.35.0-4+b1`` -> ``1.35.0``)."""
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout:
        raise ImageBuildError(f"package {package} is not installed (scripts/setup.sh installs it)")
    return tag_of_version(res.stdout)


def tag_of_version(version: str) -> str:
    """Debian version -> an image tag: epoch and Debian revision dropped (pure)."""
    v = version.split(":", 1)[-1]
    v = v.rsplit("-", 1)[0] if "-" in v else v
    return re.sub(r"[^A-Za-z0-9_.-]", "_", v)


def reference(spec: ImageSpec) -> str:
    """``docker.io/calicolab/nginx:1.22.1``: the fully qualified name the runtimes know it by."""
    return f"docker.io/{spec.name}:{package_version(spec.package)}"


def ldd_closure(binaries: tuple[str, ...]) -> list[str]:
    """Every shared library the binaries load (paths as ``ldd`` prints them), plus the loader."""
    libs: set[str] = set()
    for b in binaries:
        if not os.path.exists(b):
            raise ImageBuildError(f"{b} is missing on this machine (scripts/setup.sh installs it)")
        out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def _usr(path: str) -> str:
    """A machine path as stored in a merged-/usr image (``/lib/x`` -> ``usr/lib/x``)."""
    rel = path.lstrip("/")
    top = rel.split("/", 1)[0]
    if top in USR_LINKS:
        rel = USR_LINKS[top] + rel[len(top):]
    return rel


def layer_entries(spec: ImageSpec) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
    """(regular files: image path -> machine path, text files, symlinks) of one image."""
    files: dict[str, str] = {_usr(BUSYBOX): os.path.realpath(BUSYBOX)}
    for b in spec.binaries:
        files[_usr(b)] = os.path.realpath(b)
    libs = ldd_closure(spec.binaries) + [p for p in NSS_LIBS if os.path.exists(p)] if spec.binaries else []
    for lib in libs:
        files[_usr(lib)] = os.path.realpath(lib)
    for dst, src in spec.copies.items():
        files[dst] = src
    texts = {k: v.encode() for k, v in {**_base_files(), **spec.files}.items()}
    links = dict(USR_LINKS)
    listing = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True).stdout.split()
    have = set(files) | set(texts)
    for applet in listing:
        target = _usr("/" + applet)
        if target not in have and os.path.basename(target) != "busybox":
            links[target] = "/usr/bin/busybox"
    return files, texts, links


def _dir(tar: tarfile.TarFile, path: str, seen: set[str]) -> None:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in seen:
            seen.add(d)
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 0
            tar.addfile(info)


def build_layer(spec: ImageSpec) -> bytes:
    """The image's one layer (a tar, deterministic: sorted, mtime 0)."""
    files, texts, links = layer_entries(spec)
    buf = io.BytesIO()
    seen: set[str] = set(USR_LINKS)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "proc", "sys", "dev", "root",
                  "var", "run", *spec.dirs):
            _dir(tar, d, seen)
        for name, target in sorted(USR_LINKS.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
        for dst, src in sorted(files.items()):
            _dir(tar, os.path.dirname(dst), seen)
            st = os.stat(src)
            info = tarfile.TarInfo(dst)
            info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, 0
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for dst, data in sorted(texts.items()):
            _dir(tar, os.path.dirname(dst), seen)
            info = tarfile.TarInfo(dst)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        for dst, target in sorted(links.items()):
            if dst in USR_LINKS:
                continue
            _dir(tar, os.path.dirname(dst), seen)
            info = tarfile.TarInfo(dst)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
    return buf.getvalue()


def image_config(spec: ImageSpec, diff_id: str) -> dict:
    """The OCI/Docker image config (pure)."""
    cfg: dict = {"Env": list(spec.env), "Cmd": list(spec.cmd), "StopSignal": spec.stop_signal,
                 "WorkingDir": "/"}
    if spec.ports:
        cfg["ExposedPorts"] = {f"{p}/tcp": {} for p in spec.ports}
    return {"architecture": "amd64", "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"calicolab imagebuild from Debian {spec.package}"}]}


def cache_dir() -> Path:
    """``$CALICOLAB_IMAGE_CACHE``, else ``.cache/images`` of the checkout."""
    env = os.environ.get("CALICOLAB_IMAGE_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "images"


def build(key: str, out_dir: Path | None = None) -> tuple[Path, str]:
    """Build (or reuse) the archive of ``SPECS[key]``; returns (path, reference)."""
    spec = SPECS[key]
    ref = reference(spec)
    files, texts, links = layer_entries(spec)
    h = hashlib.sha256(json.dumps([ref, spec.cmd, spec.env, spec.ports, spec.stop_signal,
                                   sorted((k, v, os.stat(v).st_mtime_ns, os.stat(v).st_size) for k, v in files.items()),
                                   sorted((k, v.decode()) for k, v in texts.items()), sorted(links.items())]).encode())
    out = (out_dir or cache_dir())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{key}-{h.hexdigest()[:16]}.tar"
    if path.exists():
        return path, ref
    layer = build_layer(spec)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(image_config(spec, diff_id), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref.removeprefix("docker.io/")],
                            "Layers": ["layer.tar"]}]).encode()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        for name, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path, ref


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.imagebuild [KEY...]``: build the archives, print path and reference."""
    import sys

    keys = (argv if argv is not None else sys.argv[1:]) or list(SPECS)
    for k in keys:
        if k not in SPECS:
            print(f"unknown image {k!r} (known: {', '.join(SPECS)})", file=sys.stderr)
            return 2
        path, ref = build(k)
        print(f"{ref}\t{path}\t{path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ImageSpec", "ImageBuildError", "SPECS", "ALIASES", "spec_for", "reference", "build",
           "repository_path", "tag_of_version", "image_config", "cache_dir"]
