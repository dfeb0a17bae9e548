"""Run every benchmark in bench/ (each prints its own table) and print them all.

    python bench/run.py

Each benchmark runs in its own process, so one failing does not hide the others;
the exit status is 1 if any failed.
"""
from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    scripts = sorted(n for n in os.listdir(HERE)
                     if n.endswith(".py") and n != "run.py" and not n.startswith(("_", ".")))
    failed = []
    for name in scripts:
        print(f"== bench/{name}", flush=True)
        r = subprocess.run([sys.executable, os.path.join(HERE, name)])
        if r.returncode != 0:
            failed.append(name)
            print(f"bench/{name} failed with exit status {r.returncode}", flush=True)
        print(flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
