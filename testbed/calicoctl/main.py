"""``calicoctl``: the real tool's command line over calicolab's datastores.

Honours ``DATASTORE_TYPE`` (``etcdv3`` with ``ETCD_ENDPOINTS``, or ``kubernetes`` with
``KUBECONFIG`` / ``K8S_API_ENDPOINT`` / ``~/.kube/config`` / the in-cluster config; unset:
etcdv3 when ETCD_ENDPOINTS is set, else kubernetes, as Calico's apiconfig), or ``--config``
with a ``CalicoAPIConfig`` file. Errors are one clear line on stderr and exit code 1;
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

USAGE = """Usage:
  calicoctl [options] <command> [<args>...]

    create       Create a resource by file or stdin.
    replace      Replace a resource by file or stdin.
    apply        Apply a resource by file or stdin.
    delete       Delete a resource identified by file, stdin or resource type and name.
    get          Get a resource identified by file, stdin or resource type and name.
    patch        Patch a pre-existing resource in place.
    ipam         IP address management.
    node         Calico node management.
    version      Display the version of this binary.

Options:
  -h --help                    Show this screen.
  -c --config=<CONFIG>         Path to the file containing connection configuration in
                               YAML or JSON format. [default: /etc/calico/calicoctl.cfg]

Description:
  The calico kubectl command line tool for managing Calico network and security policy
  (calicolab edition: DATASTORE_TYPE=kubernetes with KUBECONFIG, or etcdv3 with ETCD_ENDPOINTS).
"""

class UsageError(Exception):
    """Bad command line; the message is printed with a pointer to --help."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="calicoctl", add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-c", "--config")
    p.add_argument("-l", "--log-level")
    p.add_argument("--allow-version-mismatch", action="store_true")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", dest="sub_config")
        sp.add_argument("-n", "--namespace")
        sp.add_argument("--allow-version-mismatch", action="store_true")

    for verb in ("create", "replace", "apply"):
        sp = sub.add_parser(verb, add_help=False)
        sp.add_argument("-f", "--filename", required=True)
        sp.add_argument("--skip-exists", action="store_true")
        sp.add_argument("-R", "--recursive", action="store_true")
        sp.add_argument("--skip-empty", action="store_true")
        common(sp)

    sp = sub.add_parser("delete", add_help=False)
    sp.add_argument("-f", "--filename")
    sp.add_argument("--skip-not-exists", action="store_true")
    sp.add_argument("kind", nargs="?")
    sp.add_argument("names", nargs="*")
    common(sp)

    sp = sub.add_parser("patch", add_help=False)
    sp.add_argument("-p", "--patch", required=True)
    sp.add_argument("-t", "--type")
    sp.add_argument("--context")
    sp.add_argument("kind")
    sp.add_argument("name")
    common(sp)

    sp = sub.add_parser("get", add_help=False)
    sp.add_argument("-f", "--filename")
    sp.add_argument("-o", "--output", default="ps")
    sp.add_argument("-A", "--all-namespaces", action="store_true")
    sp.add_argument("--export", action="store_true")
    sp.add_argument("kind", nargs="?")
    sp.add_argument("names", nargs="*")
    common(sp)

    ipam = sub.add_parser("ipam", add_help=False)
    isub = ipam.add_subparsers(dest="ipam_command")
    s = isub.add_parser("show", add_help=False)
    s.add_argument("--ip")
    s.add_argument("--show-blocks", action="store_true")
    s.add_argument("--show-borrowed", action="store_true")
    s.add_argument("--show-configuration", action="store_true")
    common(s)
    s = isub.add_parser("check", add_help=False)
    s.add_argument("--show-all-ips", action="store_true")
    s.add_argument("--show-problem-ips", action="store_true")
    s.add_argument("-o", "--output")
    common(s)
    s = isub.add_parser("release", add_help=False)
    s.add_argument("--ip")
    s.add_argument("--from-report", action="append", default=[])
    s.add_argument("--force", action="store_true")
    common(s)
    s = isub.add_parser("configure", add_help=False)
    s.add_argument("--strictaffinity")
    s.add_argument("--max-blocks-per-host", type=int)
    common(s)

    node = sub.add_parser("node", add_help=False)
    nsub = node.add_subparsers(dest="node_command")
    s = nsub.add_parser("status", add_help=False)
    s.add_argument("--ctl-socket", default="/var/run/calico/bird.ctl")
    common(s)

    sp = sub.add_parser("version", add_help=False)
    sp.add_argument("--poll")
    common(sp)
    return p


def _config_env(path: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Datastore settings: environment, overridden by a CalicoAPIConfig file if given."""
    env = dict(os.environ if base is None else base)
    if not path:
        return env
    import yaml

    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    spec = doc.get("spec") or {} if isinstance(doc, dict) else {}
    for key, var in (("datastoreType", "DATASTORE_TYPE"), ("etcdEndpoints", "ETCD_ENDPOINTS"),
                     ("kubeconfig", "KUBECONFIG"), ("k8sAPIEndpoint", "K8S_API_ENDPOINT"),
                     ("k8sAPIToken", "K8S_API_TOKEN"), ("k8sCAFile", "K8S_CA_FILE"),
                     ("k8sCertFile", "K8S_CERT_FILE"), ("k8sKeyFile", "K8S_KEY_FILE"),
                     ("k8sInsecureSkipTLSVerify", "K8S_INSECURE_SKIP_TLS_VERIFY")):
        if spec.get(key) not in (None, ""):
            env[var] = str(spec[key]).lower() if isinstance(spec[key], bool) else str(spec[key])
    return env


def make_client(config: str | None = None, env: dict[str, str] | None = None):  # noqa: ANN201
    """A datastore Client from the environment (or a --config file), with a short timeout."""
    from datastore import Client

    return Client.from_env(_config_env(config, env), timeout=2.0)


def run(argv: Sequence[str], out=None, err=None, env: dict[str, str] | None = None) -> int:  # noqa: ANN001
    """Run one calicoctl command; returns the exit code.

    ``out``/``err`` default to stdio; ``env`` (default ``os.environ``) supplies
    ``DATASTORE_TYPE`` and ``ETCD_ENDPOINTS``.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    args_list = list(argv)
    if not args_list or args_list[0] in ("-h", "--help", "help"):
        out.write(USAGE)
        return 0 if args_list else 1
    from datastore import errors
    from testbed.calicoctl.resources import InputError

    try:
        args = _parser().parse_args(args_list)
        if args.help or not args.command:
            out.write(USAGE)
            return 0
        config = getattr(args, "sub_config", None) or args.config
        if args.command == "version":
            from testbed.calicoctl import version

            return version.run(lambda: make_client(config, env), args.poll, out, err)
        if args.command == "node":
            from testbed.calicoctl import node

            if args.node_command != "status":
                raise UsageError("calicoctl node: only 'node status' is supported")
            return node.status(args.ctl_socket, out, err)
        client = make_client(config, env)
        if args.command in ("create", "replace", "apply", "delete", "get"):
            from testbed.calicoctl import resources

            return resources.run(client, args, out, err)
        if args.command == "patch":
            from testbed.calicoctl import patch, resources

            return patch.run(client, args.kind, args.name, args.namespace, args.patch, args.type, out, err,
                             refuse=resources.refuse_k8s_policy)
        if args.command == "ipam":
            from testbed.calicoctl import ipam_cmds

            return ipam_cmds.run(client, args, out, err)
        raise UsageError(f"unknown command {args.command!r}")
    except UsageError as exc:
        err.write(f"{exc}\nRun 'calicoctl --help' for usage.\n")
        return 1
    except errors.DatastoreUnavailable as exc:
        err.write(f"Failed to execute command: {exc}\n")
        return 1
    except errors.DatastoreError as exc:
        err.write(f"Failed to execute command: {exc}\n")
        return 1
    except InputError as exc:
        err.write(f"Failed to execute command: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, never a traceback
        err.write(f"Failed to execute command: {type(exc).__name__}: {exc}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``calicoctl``)."""
    code = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
