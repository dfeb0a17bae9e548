"""listgate: mailing lists run at the MTA (Postfix milter + policy, Exim).

Besides the package, a wheel carries what INSTALL uses, under the install
prefix (``listgate conf-path`` prints where): ``share/listgate/`` holds
``conf/`` (reference YAML, Postfix and Exim snippets, systemd units),
INSTALL, README.md, LICENSE and ``docs/``; ``share/man/man1/listgate.1`` is
``docs/listgate.1``, generated from the CLI's own argparse parser by
``scripts/make-man`` (argparse-manpage; a test keeps it in step with the CLI).
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
MAN_PAGE = os.path.join("docs", "listgate.1")   # written by scripts/make-man from the CLI's parser


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
    package_data={"listgate": ["templates/*.yaml", "templates/notices/*.txt", "templates/notices/*/*.txt"]},
    data_files=[
        ("share/listgate", ["INSTALL", "README.md", "LICENSE"]),
        ("share/listgate/docs", ["docs/ARCHITECTURE.md", "docs/DESIGN.md"]),
        *tree("share/listgate/conf", "conf"),
        ("share/man/man1", [MAN_PAGE]),
    ],
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
        # the Prometheus endpoint (site config ``metrics: {listen: HOST:PORT}``, listgate.metrics)
        "metrics": [
            "prometheus_client>=0.17",
        ],
        "test": [
            "pytest>=7",
            "prometheus_client>=0.17",   # tests/test_ops.py scrapes the metrics endpoint
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
