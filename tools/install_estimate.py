"""One line before `make setup` installs: how long it will take here, and why (standard library
only).

    python tools/install_estimate.py [path/to/venv/python]

The figures are from-nothing installs (no pip cache) measured with `tools/measure_from_nothing.sh`;
docs/measurements.md's table has them. Most of a first install is compiling llama-cpp-python
(llama.cpp has no wheel on PyPI for Linux); pip caches the wheel it builds, so a second install
takes about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Measured on 2 cores, from nothing: (whole install in s, of which compiling llama-cpp-python in s).
# Xeon: tools/measure_from_nothing.sh (382 s); the compile share from a timestamped install (279 of
# 425 s).
# EPYC: reported in the project's issue 14 before this change (11 min 36 s, "about 9" of them
# compiling).
MEASURED_2_CORES = {
    "Xeon (AVX-512, native bf16)": (382, 279),
    "AMD EPYC (AVX2 only)": (696, 540),
}


def cached_llama_wheel(python: str) -> bool:
    """Whether pip's cache already holds a llama-cpp-python wheel it built (then nothing
    compiles)."""
    try:
        out = subprocess.run(
            [python, "-m", "pip", "cache", "list", "llama_cpp_python"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "llama_cpp_python-" in out


def estimate_line(cores: int, cached: bool) -> str:
    if cached:
        return (
            "Installing: about 1-2 min (pip reuses the llama-cpp-python wheel it built before; "
            "the rest is downloads and unpacking)."
        )
    # the compile scales with cores (ninja runs one job per core); downloads and unpacking do not
    spans = [
        (total - compile_s) + compile_s * 2 / max(1, min(cores, 16))
        for total, compile_s in MEASURED_2_CORES.values()
    ]
    low, high = min(spans) / 60, max(spans) / 60
    measured = "; ".join(
        f"{name}: {total // 60} min {total % 60:02d} s"
        for name, (total, _) in MEASURED_2_CORES.items()
    )
    return (
        f"Installing: about {low:.0f}-{high:.0f} min on {cores} cores, "
        "most of it compiling llama-cpp-python "
        f"(no wheel on PyPI); pip caches it, so the next install takes a minute or two. "
        f"[measured on 2 cores, {measured}]"
    )


def main(argv: list[str]) -> int:
    python = argv[0] if argv else sys.executable
    print(estimate_line(os.cpu_count() or 1, cached_llama_wheel(python)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
