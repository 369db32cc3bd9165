"""What the notebooks' Colab install cell would change on Colab, from pip's own resolution replayed
here.

    # what pip would install there, and which preinstalled packages it replaces
    python tools/colab_dry_run.py

Colab's preinstalled packages (tools/colab_preinstalled.txt, a Colab-like set: see its header) are
written into a fresh virtual environment as installed-package records (metadata only, no files), so
that pip's resolver keeps them where they satisfy the course's requirements and replaces them where
they do not, as it would on Colab. Then `pip install --dry-run --report` of the cell's requirement,
`.[colab]` from this checkout, runs there. Nothing is installed. Differences from Colab: this
machine's Python version (Colab runs 3.12), and pip's index (PyPI, or the mirror pip is configured
with).

Exit status: 0 if pip resolves and leaves Colab's own runtime alone (torch, whose CUDA build must
survive the cell, and the ipython/ipykernel Colab's front end is pinned to); 1 otherwise, with the
reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREINSTALLED = Path(__file__).with_name("colab_preinstalled.txt")
MUST_KEEP = (
    "torch",
    "ipython",
    "ipykernel",
)  # Colab's CUDA torch; the kernel its front end is built for


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def preinstalled() -> dict[str, str]:
    pairs = [
        line.split("==")
        for line in PREINSTALLED.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {canonical(name): version for name, version in pairs}


def fake_installed(site_packages: Path, packages: dict[str, str]) -> None:
    """Installed-package records pip reads (METADATA, INSTALLER); no files behind them."""
    for name, version in packages.items():
        info = site_packages / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")


def dry_run(requirement: str = f"{ROOT}[colab]") -> dict:
    """pip's report, with `would_replace` (Colab's packages pip changes) and `would_add` (the
    rest)."""
    colab = preinstalled()
    with tempfile.TemporaryDirectory(prefix="qllm-colab-") as tmp:
        venv.create(tmp, with_pip=True)
        python = Path(tmp) / "bin" / "python"
        site = Path(
            subprocess.check_output(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                text=True,
            ).strip()
        )
        fake_installed(site, colab)
        done = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--report",
                "-",
                "--disable-pip-version-check",
                requirement,
            ],
            capture_output=True,
            text=True,  # pip's own index settings (PIP_INDEX_URL, pip.conf) apply
            env={
                **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
                "CMAKE_ARGS": "-DLLAVA_BUILD=OFF",
            },
        )
    if done.returncode != 0:
        reason = "\n".join(line for line in done.stderr.splitlines() if line.strip())[-3000:]
        return {"ok": False, "reason": reason}
    chosen = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(done.stdout)["install"]
    }
    replace = {name: (colab[name], version) for name, version in chosen.items() if name in colab}
    add = {name: version for name, version in chosen.items() if name not in colab}
    untouchable = sorted(set(replace) & set(MUST_KEEP))
    return {
        "ok": not untouchable,
        "would_replace": replace,
        "would_add": add,
        "reason": f"the cell would replace Colab's own {', '.join(untouchable)}"
        if untouchable
        else "",
    }


def main() -> int:
    result = dry_run()
    if "would_replace" not in result:  # pip itself refused
        print("pip could not resolve the Colab install:\n" + result["reason"])
        return 1
    print(f"On a Colab-like runtime ({PREINSTALLED.name}), the install cell would replace:")
    for name, (old, new) in sorted(result["would_replace"].items()):
        print(f"  {name:24} {old:>16} -> {new}")
    print(
        f"and add {len(result['would_add'])} packages: "
        + ", ".join(f"{n} {v}" for n, v in sorted(result["would_add"].items()))
    )
    if not result["ok"]:
        print("PROBLEM: " + result["reason"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
