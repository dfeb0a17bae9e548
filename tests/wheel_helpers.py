"""The built wheel installed into a fresh virtual environment outside the checkout (session fixture).

``installed_wheel`` builds the wheel of this checkout (``pip wheel --no-deps``:
setuptools' backend, argparse-manpage for the man page), makes a venv in a
temporary directory with the system's Python when it is recent enough (so an
unprivileged user can run it: the tests run the CLI as root against an
instance owned by ``nobody``), installs the wheel with its dependencies from
the package index, and yields the venv's directory; removed at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


def _python() -> str:
    """/usr/bin/python3 if it is 3.11+ with venv (runnable by any user), else this interpreter."""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK):
        ok = subprocess.run([system, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
                            capture_output=True, timeout=60)
        if ok.returncode == 0:
            return system
    return sys.executable


@pytest.fixture(scope="session")
def installed_wheel():
    top = Path(tempfile.mkdtemp(prefix="lg-wheel-"))
    os.chmod(top, 0o755)
    try:
        dist = top / "dist"
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(CHECKOUT)],
                             capture_output=True, text=True, timeout=300, cwd=top)
        assert out.returncode == 0, out.stderr
        [wheel] = dist.glob("listgate-*.whl")
        venv = top / "venv"
        subprocess.run([_python(), "-m", "venv", str(venv)], check=True, timeout=120)
        out = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300, cwd=top)
        assert out.returncode == 0, out.stderr
        yield venv
    finally:
        shutil.rmtree(top, ignore_errors=True)
