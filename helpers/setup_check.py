"""Notebook 00's environment check: versions, hardware, kernels, course models, and a verdict.

verdict(
    package_versions(), hardware(), llama_cpp_build(), course_models.info_rows(), kernel_reports
)
"""

from __future__ import annotations

import os
import platform
import shutil

from .env import cache_dir, cpu_name, installed_version

PACKAGES = [
    "torch",
    "transformers",
    "optimum",
    "gptqmodel",
    "llama-cpp-python",
    "huggingface_hub",
    "gguf",
    "accelerate",
    "safetensors",
    "ipywidgets",
    "numpy",
]


def package_versions() -> dict[str, str]:
    """Installed version of each package the course uses ('missing' if absent)."""
    return {
        "python": platform.python_version(),
        **{name: installed_version(name) for name in PACKAGES},
    }


def hardware() -> dict:
    """CPU, RAM, disk at the course cache, and which accelerators torch sees."""
    import psutil

    where = cache_dir()
    probe = (
        where
        if where.exists()
        else where.parent
        if where.parent.exists()
        else os.path.expanduser("~")
    )
    ram = psutil.virtual_memory()
    info = {
        "cpu": cpu_name(),
        "cores (logical)": os.cpu_count(),
        "cores (physical)": psutil.cpu_count(logical=False),
        "RAM total (GiB)": round(ram.total / 2**30, 1),
        "RAM available (GiB)": round(ram.available / 2**30, 1),
        "disk free at cache (GiB)": round(shutil.disk_usage(probe).free / 2**30, 1),
        "cuda": False,
        "mps": False,
    }
    try:
        import torch

        info["torch build"] = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU only"
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(
                {
                    "cuda": True,
                    "gpu": props.name,
                    "GPU memory (GiB)": round(props.total_memory / 2**30, 1),
                }
            )
        info["mps"] = bool(
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        )
    except ImportError:
        info["torch build"] = "missing"
    return info


def llama_cpp_build() -> dict:
    """Whether the installed llama-cpp-python can offload to a GPU, and its CPU features."""
    try:
        import llama_cpp
    except ImportError:
        return {"installed": False}
    return {
        "installed": True,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


def verdict(versions: dict, hw: dict, llama: dict, models: list[dict], kernels: dict) -> list[str]:
    """Problems with what to do about each; an empty list means ready."""
    problems = [
        f"{name} is not installed: run `make setup` (or the Colab install cell)."
        for name in ("torch", "transformers", "optimum", "gptqmodel", "llama-cpp-python", "gguf")
        if versions.get(name) == "missing"
    ]
    if versions.get("gptqmodel", "missing") not in ("missing", "7.6.0"):
        problems.append(
            f"gptqmodel {versions['gptqmodel']} is untested here; the course pins 7.6.0 "
            "(7.7.0 pulls a CUDA torch)."
        )
    not_ready = [m["format"] for m in models if m["status"] != "ready"]
    if not_ready:
        problems.append(
            f"course models not built: {', '.join(not_ready)}. Run `python -m course.models build`."
        )
    if hw.get("cuda") and llama.get("installed") and not llama.get("gpu_offload"):
        problems.append(
            "a GPU is present but llama-cpp-python was built for the CPU only: reinstall with "
            "CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python==0.3.36"
        )
    problems += [
        f"{fmt}: {report['warning']}" for fmt, report in kernels.items() if report.get("warning")
    ]
    if hw.get("RAM available (GiB)", 99) < 2:
        problems.append(
            f"only {hw['RAM available (GiB)']} GiB RAM free: close other programs or notebooks."
        )
    if hw.get("disk free at cache (GiB)", 99) < 3:
        problems.append(
            f"only {hw['disk free at cache (GiB)']} GiB disk free where models are cached; "
            "free space or set QLLM_CACHE_DIR to a bigger disk."
        )
    return problems
