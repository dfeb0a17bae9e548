"""listgate: mailing lists run at the MTA (Postfix milter + policy, Exim).

Besides the package, a wheel carries what INSTALL uses, under the install
prefix (``listgate conf-path`` prints where): ``share/listgate/`` holds
``conf/`` (reference YAML, Postfix and Exim snippets, systemd units),
INSTALL, README.md, LICENSE and ``docs/``; ``share/man/man1/listgate.1`` is
generated at build time from the CLI's own argparse parser by
argparse-manpage (a build requirement, pyproject.toml).
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
MAN_PAGE = os.path.join("build", "man", "listgate.1")


def write_man_page(path: str) -> None:
    """listgate(1) from ``listgate.cli.build_parser`` (every sub-command with its options)."""
    from argparse_manpage.manpage import Manpage

    sys.path.insert(0, HERE)           # the CLI of this source tree, not an installed copy
    try:
        from listgate import __version__
        from listgate.cli import build_parser
    finally:
        sys.path.remove(HERE)
    data = {"prog": "listgate", "project_name": "listgate", "version": __version__,
            "description": "mailing lists run at the MTA (Postfix milter and policy server, Exim)",
            "manual_title": "listgate manual", "url": None, "authors": ["the listgate developers"]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(str(Manpage(build_parser(), _data=data)))


class BuildWithManPage(build_py):
    """build_py, and the man page that data_files installs."""

    def run(self):
        write_man_page(os.path.join(HERE, MAN_PAGE))
        super().run()


def tree(target: str, source: str) -> list:
    """data_files entries for every file under ``source`` (relative to this directory), kept in their folders."""
    out = {}
    for path in sorted(glob.glob(os.path.join(source, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            out.setdefault(os.path.join(target, os.path.relpath(os.path.dirname(path), source)), []).append(path)
    return [(os.path.normpath(k), v) for k, v in out.items()]


setup(
    name="listgate",
    version="0.2.0",
    description="Mailing lists at the MTA: milter, policy server and runner for Postfix and Exim",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=find_packages(include=["listgate", "listgate.*"]),
    package_data={"listgate": ["templates/*.txt", "templates/*.yaml"]},
    data_files=[
        ("share/listgate", ["INSTALL", "README.md", "LICENSE"]),
        ("share/listgate/docs", ["docs/ARCHITECTURE.md", "docs/DESIGN.md"]),
        *tree("share/listgate/conf", "conf"),
        ("share/man/man1", [MAN_PAGE]),
    ],
    cmdclass={"build_py": BuildWithManPage},
    install_requires=[
        "pymilter>=1.0.5",
        "PyYAML>=6.0",
        "dnspython>=2.0",
        "flufl.bounce>=4.0",
        "aiosmtpd>=1.4",  # the LMTP front end (listgate lmtp)
        "dkimpy>=1.1",  # DKIM signing and ARC sealing of posts
        "authres>=1.2",  # Authentication-Results parsing, which dkimpy's ARC needs
        "publicsuffixlist>=1.0",  # organizational domains for DMARC (bundled list, no download)
        "aiohttp>=3.9",   # the web front end (listgate web: one-click unsubscribe)
    ],
    extras_require={
        # the PostgreSQL store backend (site config ``store: {url: postgresql://...}``)
        "postgres": [
            "psycopg[binary]>=3.1",
            "psycopg_pool>=3.3",
        ],
        "test": [
            "pytest>=7",
            "aiosmtpd>=1.4",
            "miltertest>=1.0",
            "psycopg[binary]>=3.1",
            "psycopg_pool>=3.3",
            "argparse-manpage>=4.5",   # tests/test_wheel.py: the man page is what the CLI says
        ],
    },
    entry_points={"console_scripts": ["listgate = listgate.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Operating System :: POSIX :: Linux",
        "Topic :: Communications :: Email :: Mailing List Servers",
    ],
)
