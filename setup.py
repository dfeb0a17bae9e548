"""listgate: mailing lists run at the MTA (Postfix milter + policy, Exim)."""
from setuptools import find_packages, setup

setup(
    name="listgate",
    version="0.2.0",
    description="Mailing lists at the MTA: milter, policy server and runner for Postfix and Exim",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["listgate", "listgate.*"]),
    package_data={"listgate": ["templates/*.txt"]},
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
        ],
    },
    entry_points={"console_scripts": ["listgate = listgate.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Mailing List Servers",
    ],
)
