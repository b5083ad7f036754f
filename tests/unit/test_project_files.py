"""The project's own entry files: Vagrantfile validates, CI runs the README's test command."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import require, require_tool

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_vagrantfile_validates(tmp_path):
    vagrant = require_tool("vagrant")
    shutil.copy(ROOT / "Vagrantfile", tmp_path / "Vagrantfile")
    res = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    text = (ROOT / "Vagrantfile").read_text()
    assert "scripts/setup.sh" in text and "scripts/test.sh" in text


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    assert blocks, "README must open with a code block"
    commands = [ln for ln in blocks[0].splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    demo, test = commands
    assert "demo" in demo and "test" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test.replace("sudo ", "").strip() in ci


def test_the_venv_finds_every_top_level_package():
    """Console scripts (calico-node, calico...) import through the venv's editable install, which
    maps only the packages pyproject listed when it was installed: a new one needs a re-run of
    scripts/setup.sh, or every lab's calico-node fails with ModuleNotFoundError."""
    import tomllib

    venv_py = ROOT / ".venv" / "bin" / "python"
    require(venv_py.exists(), "no .venv in this checkout: run scripts/setup.sh")
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    names = [p.rstrip("*") for p in include]
    res = subprocess.run([str(venv_py), "-c", f"import {', '.join(names)}"], cwd="/", capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, (f"the venv cannot import a package of pyproject.toml from outside the repo: "
                                 f"re-run `sudo bash scripts/setup.sh` ({res.stderr.strip().splitlines()[-1]})")
