"""Where a model will sit, in what dtype, and whether it fits there: decided before anything is
loaded.

device = pick_device("auto")                     # "cuda" when torch sees a GPU, else "cpu"
resolve_dtype(path, "hf", device)                # DtypeChoice: helpers.precision's rule, and why
check_memory_fit(path, "gptq", device=device)    # the figures, or NotEnoughMemoryError with them
estimate_memory_bytes(path, "gguf")
weights_in_memory_bytes(path, "float32")
free_memory_bytes("cuda:0")
with freed_blocks_go_back():                       # a load whose transient blocks are returned
    ...
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import platform
import re
from contextlib import contextmanager
from pathlib import Path

from .env import cpu_flags
from .errors import CourseError, NotEnoughMemoryError
from .hub import PICKLE_SUFFIXES
from .model_info import gguf_header
from .precision import DtypeChoice, compute_dtype

# What loading costs beyond the weights, as a stated rule of thumb (not a per-model measurement):
# Transformers: tokenizer (Gemma's 262k-token one alone takes ~300 MiB), activations, KV cache and
# the kernels' repacking on first use; llama.cpp: its KV cache and scratch buffers. On the course
# models the peak resident memory measured above the imported libraries stayed under it
# (tests/test_memory_peak.py).
MEMORY_OVERHEAD_FRACTION = 0.50
MEMORY_OVERHEAD_BYTES = 600 * 2**20
GGUF_OVERHEAD_FRACTION = 0.20
GGUF_OVERHEAD_BYTES = 300 * 2**20

_DTYPE_NAMES = {
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def normalize_dtype(dtype) -> str | None:
    """'float32' / 'bfloat16' / 'float16' from a name, an alias (fp32, bf16, fp16), a torch.dtype;
    None for auto.
    """
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "").lower()
    if name not in _DTYPE_NAMES:
        raise CourseError(
            f"dtype={dtype!r} is not one the course loads: use None (the checkpoint's own), "
            "'bfloat16', 'float16' or 'float32'."
        )
    return _DTYPE_NAMES[name]


def pick_device(device: str = "auto") -> str:
    """ "auto": CUDA when torch sees a GPU, else the CPU (never MPS: GPTQModel's MPS kernels need
    MLX, and llama.cpp uses Metal by itself; ask for "mps" by name). "cuda"/"cuda:N" fail clearly
    without a GPU."""
    if device in (None, "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # a GGUF-only install
            return "cpu"
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = torch.__version__
            raise CourseError(
                f"device={device!r} but torch {build} sees no CUDA GPU"
                + (
                    " (it is a CPU-only build)"
                    if "+cpu" in build or torch.version.cuda is None
                    else ""
                )
                + ". Use device='auto' or 'cpu' here; on a GPU machine install a CUDA build of "
                "torch (https://pytorch.org/get-started/locally/) and check `nvidia-smi`."
            )
    elif device not in ("cpu", "mps"):
        raise CourseError(
            f"device={device!r} is not one the course knows: use 'auto', 'cpu', 'cuda', 'cuda:N' "
            "or 'mps'."
        )
    return device


def _config(path) -> dict:
    """config.json as a dict (`path` is a model folder, or already the dict); {} if unreadable."""
    if isinstance(path, dict):
        return path
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_dtype(path) -> str | None:
    """The dtype config.json records (a folder, or its config as a dict; None if none the course
    knows).
    """
    cfg = _config(path)
    try:
        return normalize_dtype(cfg.get("dtype") or cfg.get("torch_dtype"))
    except CourseError:
        return None


def checkpoint_model_type(path) -> str | None:
    """The architecture config.json names (`model_type`, or its text model's), e.g.
    'gemma3_text'.
    """
    cfg = _config(path)
    text_config = cfg.get("text_config") or {}
    return cfg.get("model_type") or text_config.get("model_type")


def resolve_dtype(
    path,
    fmt: str,
    device: str,
    dtype="auto",
    work: str = "decode",
    overflows_float16: bool | None = None,
):
    """The float type a Transformers-format model is loaded in, and why (a `precision.DtypeChoice`):
    "auto" applies helpers.precision's rule for the device, the work and the model's architecture
    (`overflows_float16=True`: measured to overflow float16); None keeps the checkpoint's own."""
    if dtype is None:
        return DtypeChoice(checkpoint_dtype(path), "the checkpoint's own (config.json)")
    if str(dtype) != "auto":
        return DtypeChoice(normalize_dtype(dtype), "asked for")
    if fmt in ("gptq", "awq") and not device.startswith("cuda"):
        return DtypeChoice(
            "bfloat16", "GPTQModel's CPU 4-bit kernels take bf16 (fp32 input is cast to bf16)"
        )
    choice = compute_dtype(device, work, checkpoint_model_type(path), overflows_float16)
    if fmt in ("gptq", "awq") and choice.dtype == "float32":
        # no GPTQModel GPU kernel computes in fp32; its PyTorch kernel runs bf16 on any GPU
        return DtypeChoice(
            "bfloat16",
            f"{choice.reason}; GPTQModel's GPU kernels take only fp16 or bf16, so bf16, "
            "run by its PyTorch kernel",
        )
    return choice


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a loader reads: the .gguf file, else the folder's *.safetensors (only the
    shards an index names; never a stray `consolidated.safetensors`, which Mistral repos ship for
    their own tools), else *.bin/*.pt."""
    path = Path(path)
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    try:
        weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
    except (ValueError, KeyError):
        weight_map = None
    return [
        path / name
        for name in weight_names([p.name for p in path.iterdir() if p.is_file()], weight_map)
    ]


def weight_names(names: list[str], weight_map: dict | None = None) -> list[str]:
    """`weight_files`' rule on file names (a folder's, or a hub repo's): `weight_map` is the
    index's.
    """
    if weight_map:
        return sorted(set(weight_map.values()) & set(names))
    safetensors = sorted(n for n in names if n.endswith(".safetensors"))
    if len(safetensors) > 1:
        safetensors = [n for n in safetensors if n != "consolidated.safetensors"]
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    return safetensors or pickles or sorted(n for n in names if n.endswith(".gguf"))


def weights_bytes(path: str | os.PathLike) -> int:
    """Bytes of model weights on disk (see `weight_files`)."""
    return sum(p.stat().st_size for p in weight_files(path))


def _safetensors_tensors(file: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) from the header (safe_open reads no data), except compressed-tensors'
    `*.weight_shape` tensors (a few bytes each), whose values it reads."""
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as handle:
        return {
            name: (
                handle.get_slice(name).get_dtype(),
                handle.get_tensor(name).tolist()
                if name.endswith(".weight_shape")
                else handle.get_slice(name).get_shape(),
            )
            for name in handle.keys()  # noqa: SIM118 - a safe_open handle is not iterable
        }


def _bits(kind: str) -> int:
    """Bits per element of a safetensors dtype: the number in its name (F16, BF16, I32, F8_E4M3,
    C64).
    """
    return 8 if kind == "BOOL" else int(re.search(r"\d+", kind)[0])


def weights_in_memory_bytes(path: str | os.PathLike, dtype: str | None = None) -> int:
    """Bytes the weights take once loaded (`in_memory_bytes` of their safetensors headers)."""
    files = weight_files(path)
    if not all(f.suffix == ".safetensors" for f in files):
        return weights_bytes(path)
    tensors = {
        name: kind_shape for f in files for name, kind_shape in _safetensors_tensors(f).items()
    }
    return in_memory_bytes(tensors, weights_bytes(path), dtype)


def in_memory_bytes(tensors: dict, files_bytes: int, dtype: str | None = None) -> int:
    """From safetensors headers (name -> (dtype, shape)): the files' size if loading changes
    nothing, else the sum of `tensors_in_memory`."""
    if normalize_dtype(dtype) is None and not any(
        name.endswith(".weight_packed") for name in tensors
    ):
        return files_bytes
    return sum(tensors_in_memory(tensors, dtype).values())


def tensors_in_memory(tensors: dict, dtype: str | None = None) -> dict[str, int]:
    """Bytes of each tensor once loaded: floats cast to `dtype` (None keeps them), packed ints as
    they are; compressed-tensors' `*.weight_packed` as the dense `*.weight` of its `*.weight_shape`
    (their values, in `tensors`) it is decompressed to on load (in `dtype`, else in the dtype of its
    scales)."""
    dtype = normalize_dtype(dtype)
    packed = {name[: -len(".weight_packed")] for name in tensors if name.endswith(".weight_packed")}
    width = {"float32": 32, "bfloat16": 16, "float16": 16}.get(dtype)
    sizes = {}
    for name, (kind, shape) in tensors.items():
        module = name.rsplit(".", 1)[0]
        # dense: its original shape, as a float
        if module in packed and name.endswith(".weight_packed"):
            bits = width or _bits(tensors[module + ".weight_scale"][0])
            sizes[module + ".weight"] = math.prod(tensors[module + ".weight_shape"][1]) * bits // 8
        # a packed module's scales, zero points and shape are gone once dense
        elif module not in packed:
            sizes[name] = (
                math.prod(shape)
                * (width if width and kind.startswith(("F", "BF")) else _bits(kind))
                // 8
            )
    return sizes


def free_memory_bytes(device: str = "cpu") -> int:
    """Free RAM ("available", as the kernel counts it: free + reclaimable cache) or free CUDA
    memory.
    """
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def memory_overhead(fmt: str) -> tuple[float, int]:
    """The stated overhead (fraction of the weights, fixed bytes) for a format's backend."""
    if fmt == "gguf":
        return GGUF_OVERHEAD_FRACTION, GGUF_OVERHEAD_BYTES
    return MEMORY_OVERHEAD_FRACTION, MEMORY_OVERHEAD_BYTES


# The types llama.cpp's CPU backend copies into an interleaved layout for its matrix kernels
REPACKED_TYPES = ("Q4_0", "Q4_K", "IQ4_NL")


def cpu_repacks() -> bool:
    """Whether llama.cpp repacks weights on this CPU: x86 with AVX2 (measured), or ARM (its repack
    code has ARM layouts too; not measured here)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "avx2" in cpu_flags()
    return machine in ("aarch64", "arm64")


def repacked_bytes(header: dict) -> int:
    """Bytes llama.cpp copies into its anonymous `CPU_REPACK` buffer when it loads a GGUF on this
    CPU, from a header as `model_info.gguf_header` gives it: every matrix of REPACKED_TYPES with
    rows in groups of 8, except the token embedding (it is looked up, not multiplied). The mapped
    file stays resident beside the copy."""
    if not cpu_repacks():
        return 0
    shapes = header["shapes"]
    return sum(
        header["tensor_bytes"][name]
        for name, kind in header["types"].items()
        if kind in REPACKED_TYPES
        and name != "token_embd.weight"
        and len(shapes[name]) == 2
        and shapes[name][1] % 8 == 0
    )


def _loaded_weights(path, fmt: str, dtype: str | None) -> int:
    if fmt == "gguf":  # no cast: the mapped file, and the copy llama.cpp repacks
        return weights_bytes(path) + repacked_bytes(gguf_header(path))
    return weights_in_memory_bytes(path, dtype)


def estimate_memory_bytes(path, fmt: str, dtype: str | None = None) -> int:
    """Weights in memory (in `dtype`) plus the stated overhead (`memory_needed`)."""
    return memory_needed(_loaded_weights(path, fmt, dtype), fmt)


def memory_needed(weights: int, fmt: str) -> int:
    """The rule: weights in memory x1.5 + 600 MiB (Transformers), x1.2 + 300 MiB (GGUF, whose
    weights in memory are the mapped file and the copy llama.cpp repacks, `repacked_bytes`)."""
    fraction, fixed = memory_overhead(fmt)
    return int(weights * (1 + fraction) + fixed)


def check_memory_fit(
    path, fmt: str, device: str = "cpu", dtype: str | None = None, free_bytes: int | None = None
) -> dict:
    """Refuse (NotEnoughMemoryError) before loading if the model would not fit; return the figures.
    `free_bytes` replaces the measured free RAM / CUDA memory (for tests and what-ifs)."""
    weights = _loaded_weights(path, fmt, dtype)
    need = estimate_memory_bytes(path, fmt, dtype)
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    figures = {
        "need_bytes": need,
        "free_bytes": free,
        "weights_bytes": weights,
        "overhead_bytes": need - weights,
        "device": device,
        "fits": need <= free,
    }
    if need > free:
        fraction, fixed = memory_overhead(fmt)
        where = "GPU memory" if device.startswith("cuda") else "RAM"
        gib = 2**30
        cast = f" as {normalize_dtype(dtype)}" if normalize_dtype(dtype) and fmt != "gguf" else ""
        repacked = repacked_bytes(gguf_header(path)) if fmt == "gguf" else 0
        if repacked:
            weights_said = (
                f"{(weights - repacked) / gib:.2f} GiB of weights mapped from the file + "
                f"{repacked / gib:.2f} GiB of them repacked by llama.cpp into a copy"
            )
        else:
            weights_said = f"{weights / gib:.2f} GiB of weights{cast}"
        raise NotEnoughMemoryError(
            f"Not loading {Path(path).name}: it needs about {need / gib:.1f} GiB of {where} "
            f"({weights_said} + {fraction:.0%} + {fixed // 2**20} MiB "
            f"overhead), and only {free / gib:.1f} GiB is free on {device}. Close other notebooks "
            "or kernels, choose a smaller model or a 4-bit one (GGUF Q4_K_M, GPTQ or AWQ)"
            + (
                ", keep the checkpoint's dtype instead of float32"
                if cast.endswith("float32")
                else ""
            )
            + ", or pass check_memory=False if you know better."
        )
    return figures


# glibc's mallopt parameter for the size from which a block gets its own mapping
_M_MMAP_THRESHOLD = -3


def _glibc():
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "confstr") or "glibc" not in (_libc_version() or ""):
        return None
    return ctypes.CDLL(name)


def _libc_version() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None


@contextmanager
def freed_blocks_go_back(threshold: int = 2**20, after: int = 32 * 2**20):
    """Inside: every block of `threshold` bytes or more is its own mapping, given back to the
    system when freed. glibc otherwise raises that limit to the size of each large block freed,
    serves the next ones from its heap, and cannot shrink a heap that tensors made later sit on:
    GPTQModel repacking a small model's layers one by one left a few hundred MiB of such garbage,
    a different amount each run. After: `after` (glibc's own ceiling for that limit). Elsewhere
    than glibc: nothing."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, int(after))
