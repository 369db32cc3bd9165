"""Facts about this machine and this install, each read in one place.

cache_dir()              # where the course keeps its models ($QLLM_CACHE_DIR to move it)
default_threads()        # CPU threads for inference ($QLLM_THREADS, else every core)
installed_version("torch"), cpu_name(), cpu_flags()
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def cache_dir() -> Path:
    """Where the course models live: $QLLM_CACHE_DIR, else <user cache>/quantized-llms-locally."""
    if os.environ.get("QLLM_CACHE_DIR"):
        return Path(os.environ["QLLM_CACHE_DIR"]).expanduser()
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quantized-llms-locally"
    )


def default_threads() -> int:
    """Threads for CPU inference: $QLLM_THREADS, else all cores (tests pin it to avoid
    oversubscription)."""
    return int(os.environ.get("QLLM_THREADS") or os.cpu_count() or 1)


def installed_version(name: str, missing: str | None = "missing") -> str | None:
    """The installed version of a package, or `missing` (the word 'missing', unless told)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return missing


def _cpuinfo(*keys: str) -> str | None:
    """The first /proc/cpuinfo value whose line starts with one of `keys` (Linux; None
    elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith(keys)), None
            )
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name, else what `platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (x86 "flags", Arm "Features"); empty
    elsewhere."""
    return set((_cpuinfo("flags", "Features") or "").split())
