"""Load a model in any of the course's formats with one call, and see what you loaded.

    lm = load_model(course_models.model_path("gptq"))   # or a .gguf file, a folder, a hub id
    print(lm)                                           # format, backend, device, dtype, time
    generate(lm, "The capital of France is", max_new_tokens=20)
    kernel_report(lm)                                   # which kernel runs the 4-bit layers

Formats are detected from the files: a `.gguf` file goes to llama.cpp (llama-cpp-python);
a folder with `config.json` goes to Transformers, and its
`quantization_config.quant_method` says whether it is GPTQ, AWQ (both through GPTQModel),
compressed-tensors (llm-compressor's format: decompressed to dense layers on a CPU) or plain
("hf"). Before loading, `check_memory_fit` compares what the weights will need with the free RAM
(or GPU memory) and refuses with the numbers instead of letting the kernel die.
Anything that is not a local path but looks like `owner/name` is fetched with `helpers.hub`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import default_threads  # noqa: F401  (notebooks call loading.default_threads)
from .errors import (CourseError, MissingBackendError, ModelNotFoundError, NotAModelError,  # noqa: F401
                     NotEnoughMemoryError, UnsupportedFormatError)
from .errors import ContextOverflowError, ContextTruncationWarning
from .gguf_tools import context_report, file_type_name, validate_gguf

GGUF_MAGIC = b"GGUF"
# What loading costs beyond the weights, as a stated rule of thumb (not a per-model measurement):
# Transformers: tokenizer (Gemma's 262k-token one alone takes ~300 MiB), activations, KV cache and
# the kernels' repacking on first use; llama.cpp: its KV cache and scratch buffers. On the course
# models the peak resident memory measured above the imported libraries stayed under this estimate.
MEMORY_OVERHEAD_FRACTION = 0.50
MEMORY_OVERHEAD_BYTES = 600 * 2**20
GGUF_OVERHEAD_FRACTION = 0.20
GGUF_OVERHEAD_BYTES = 300 * 2**20


_METHOD_HINTS = {
    "bitsandbytes": " (bitsandbytes quantizes on the fly at load time; it needs `pip install bitsandbytes`)",
    "fp8": " (FP8 needs a recent NVIDIA GPU)",
}


@dataclass
class LoadedModel:
    """A loaded model, whatever the format: `model` is a Transformers model or a llama_cpp.Llama."""

    model: Any
    tokenizer: Any  # None for llama.cpp, which tokenizes itself
    format: str  # "gguf" | "gptq" | "awq" | "hf"
    backend: str  # "llama.cpp" | "transformers"
    path: Path
    device: str
    dtype: str
    load_seconds: float
    context_length: int
    notes: list[str] = field(default_factory=list)
    dtype_reason: str = ""  # why this dtype (helpers.precision's rule, or "asked for")

    def __repr__(self) -> str:
        why = f" ({self.dtype_reason})" if self.dtype_reason else ""
        return (f"LoadedModel(format={self.format!r}, backend={self.backend!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}{why}, context_length={self.context_length}, "
                f"load_seconds={self.load_seconds:.1f}, path='{self.path}')")


# ---- what is this path? ---------------------------------------------------------------------

def check_gguf_header(path: str | os.PathLike) -> dict:
    """Read a GGUF header (magic, version, counts); raise NotAModelError if it is not a GGUF file."""
    path = Path(path)
    # one checker for everything: empty, not GGUF (and what it looks like instead), version, a damaged
    # or truncated header, missing tensor data; each a clear NotAModelError subclass
    header = validate_gguf(path)
    return {"version": header.version, "tensor_count": len(header.tensors), "kv_count": len(header.metadata),
            "bytes": header.file_size}


def detect_format(path: str | os.PathLike) -> str:
    """'gguf', 'gptq', 'awq', 'compressed-tensors' or 'hf' for a local file or folder (module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Build the course models with `python -m course.models build`, "
            "download a model (notebook 01), or check the spelling of the path.")
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if path.suffix.lower() == ".gguf" or magic == GGUF_MAGIC:
            check_gguf_header(path)
            return "gguf"
        raise NotAModelError(
            f"{path} is a file but not a .gguf model (it starts with {magic!r}). Pass a .gguf file, or the "
            "folder that holds config.json and the *.safetensors weights (not a file inside it).")
    config = path / "config.json"
    if not config.exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        hint = (f" It holds {len(ggufs)} .gguf files: pass one of them, e.g. {ggufs[0]}." if ggufs else "")
        raise NotAModelError(
            f"{path} is a folder but not a model folder: it has no config.json.{hint} "
            "A Transformers model folder holds config.json plus *.safetensors weights.")
    try:
        cfg = json.loads(config.read_text())
    except ValueError as err:
        raise NotAModelError(f"{config} is not valid JSON ({err}); the download may be incomplete.") from None
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method") or "").lower()
    if not method:
        return "hf"
    if method in ("gptq", "awq", "compressed-tensors"):
        return method
    raise UnsupportedFormatError(
        f"{path} is quantized with {method!r} (config.json: quantization_config.quant_method). This course "
        "loads GPTQ, AWQ and compressed-tensors folders and GGUF files. Look for a -GPTQ, -AWQ or -GGUF version "
        f"of the same model on the hub, or load this one with the library its model card names{_METHOD_HINTS.get(method, '')}.")


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a loader reads: the .gguf file, else the folder's *.safetensors, else *.bin/*.pt.

    With a `model.safetensors.index.json` only the shards it names count; a stray
    `consolidated.safetensors` (Mistral repos ship one for their own tools) is left out.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / n for n in names if (path / n).exists()]
        except (ValueError, KeyError):
            pass
    safetensors = sorted(path.glob("*.safetensors"))
    if len(safetensors) > 1:
        safetensors = [p for p in safetensors if p.name != "consolidated.safetensors"]
    if safetensors:
        return safetensors
    pickles = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    return pickles or sorted(path.glob("*.gguf"))


def weights_bytes(path: str | os.PathLike) -> int:
    """Bytes of model weights on disk (see `weight_files`)."""
    return sum(p.stat().st_size for p in weight_files(path))


_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_TENSOR_BYTES = {**_FLOAT_BYTES, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
                 "BOOL": 1}
_DTYPE_ALIASES = {"auto": None, "float32": "float32", "fp32": "float32", "float": "float32",
                  "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
                  "half": "float16"}


def _safetensors_tensors(file: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor in a safetensors file (safe_open reads only the header),
    and for compressed-tensors' `*.weight_shape` tensors (a few bytes each) their values."""
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as handle:
        return {name: (handle.get_slice(name).get_dtype(),
                       handle.get_tensor(name).tolist() if name.endswith(".weight_shape")
                       else handle.get_slice(name).get_shape())
                for name in handle.keys()}


def weights_in_memory_bytes(path: str | os.PathLike, dtype: str | None = None) -> int:
    """Bytes the weights take once loaded: float tensors cast to `dtype` (None keeps them), packed ints as is,
    except compressed-tensors' `*.weight_packed`, which the course decompresses on load to dense weights
    of their `*.weight_shape` (in `dtype`, else in the dtype of their scales)."""
    dtype = normalize_dtype(dtype)
    files = weight_files(path)
    if not all(f.suffix == ".safetensors" for f in files):
        return sum(f.stat().st_size for f in files)
    tensors = {name: kind_shape for f in files for name, kind_shape in _safetensors_tensors(f).items()}
    packed = {name[:-len(".weight_packed")] for name in tensors if name.endswith(".weight_packed")}
    if dtype is None and not packed:
        return sum(f.stat().st_size for f in files)
    width = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype)
    total = 0
    for name, (kind, shape) in tensors.items():
        module = name.rsplit(".", 1)[0]
        if module in packed and name.endswith(".weight_packed"):  # dense: its original shape, as a float
            dense_shape = tensors[module + ".weight_shape"][1]
            total += math.prod(dense_shape) * (width or _TENSOR_BYTES[tensors[module + ".weight_scale"][0]])
        elif module not in packed:  # a packed module's scales, zero points and shape are gone once dense
            total += math.prod(shape) * (width if width and kind in _FLOAT_BYTES else _TENSOR_BYTES[kind])
    return total


# ---- will it fit? ---------------------------------------------------------------------------

def free_memory_bytes(device: str = "cpu") -> int:
    """Free RAM ("available", as the kernel counts it: free + reclaimable cache) or free CUDA memory."""
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


def estimate_memory_bytes(path, fmt: str, dtype: str | None = None) -> int:
    """Weights in memory (in `dtype`) plus the stated overhead: x1.5 + 600 MiB (Transformers), x1.2 + 300 MiB (GGUF)."""
    weights = weights_bytes(path) if fmt == "gguf" else weights_in_memory_bytes(path, dtype)
    fraction, fixed = memory_overhead(fmt)
    return int(weights * (1 + fraction) + fixed)


def check_memory_fit(path, fmt: str, device: str = "cpu", dtype: str | None = None,
                     free_bytes: int | None = None) -> dict:
    """Refuse (NotEnoughMemoryError) before loading if the model would not fit; return the figures.

    need = weights in memory + overhead (`memory_overhead`); free = available RAM, or free memory
    of the CUDA device. `free_bytes` overrides the measured free memory (for tests and what-ifs).
    """
    weights = weights_bytes(path) if fmt == "gguf" else weights_in_memory_bytes(path, dtype)
    need = estimate_memory_bytes(path, fmt, dtype)
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    fraction, fixed = memory_overhead(fmt)
    figures = {"need_bytes": need, "free_bytes": free, "weights_bytes": weights,
               "overhead_bytes": need - weights, "device": device, "fits": need <= free}
    if need > free:
        where = "GPU memory" if device.startswith("cuda") else "RAM"
        gib = 2**30
        cast = f" as {normalize_dtype(dtype)}" if normalize_dtype(dtype) and fmt != "gguf" else ""
        raise NotEnoughMemoryError(
            f"Not loading {Path(path).name}: it needs about {need / gib:.1f} GiB of {where} "
            f"({weights / gib:.2f} GiB of weights{cast} + {fraction:.0%} + {fixed // 2**20} MiB overhead), "
            f"and only {free / gib:.1f} GiB is free on {device}. Close other notebooks or kernels, choose a "
            "smaller model or a 4-bit one (GGUF Q4_K_M, GPTQ or AWQ)"
            + (", keep the checkpoint's dtype instead of float32" if cast.endswith("float32") else "")
            + ", or pass check_memory=False if you know better.")
    return figures


# ---- which kernels run the quantized layers? -----------------------------------------------

def classify_kernels(layers) -> dict:
    """The kernel report from (quantized-linear class name, device) pairs: a pure function, easy to test.

    On a CUDA device, a class with "Torch" in its name (TorchLinear, AwqTorchLinear, ...) is
    GPTQModel's pure-PyTorch fallback: it dequantizes on every call and runs many times slower
    than Marlin, Machete, ExllamaV2 or the AWQ GEMM kernels. That is today's form of the old
    AutoGPTQ trap ("CUDA extension not installed", model.device still says cuda). Quantized
    layers on the CPU while others sit on a GPU mean the model was partly offloaded: slow too.
    """
    counts: dict[str, int] = {}
    devices: set[str] = set()
    slow: set[str] = set()
    for name, device in layers:
        device = str(device)
        counts[name] = counts.get(name, 0) + 1
        devices.add(device)
        if device.startswith("cuda") and "Torch" in name:
            slow.add(name)
    on_gpu = any(d.startswith("cuda") for d in devices)
    offloaded = on_gpu and any(not d.startswith("cuda") for d in devices)
    warnings_ = []
    if slow:
        warnings_.append(
            f"SLOW KERNEL: the model is on the GPU but {', '.join(sorted(slow))} runs its quantized layers: "
            "GPTQModel's pure-PyTorch fallback, many times slower than Marlin/ExllamaV2/AWQ GEMM, although "
            "model.device says cuda. GPTQModel compiles its CUDA kernels on first use: that needs a CUDA "
            "build of torch, the CUDA toolkit (nvcc) with `ninja`, and a Turing-or-newer GPU (sm_75+). "
            "Look above for a kernel compile error, and load in float16/bfloat16, not float32.")
    if offloaded:
        warnings_.append(
            "OFFLOADED: some quantized layers are on the CPU while others are on the GPU (device_map put "
            "what did not fit in GPU memory on the CPU). Every token now crosses the PCIe bus: free GPU "
            "memory or pick a smaller model.")
    if on_gpu:
        expected = "Marlin, Machete, ExllamaV2 or AWQ GEMM/GEMV kernels"
    elif any(d.startswith("cpu") for d in devices):
        expected = "TorchAten kernels (TorchAtenLinear / TorchAtenAwqLinear)"
    else:
        expected = "-"
    return {"quantized_linear": counts, "devices": sorted(devices), "expected": expected,
            "slow_fallback": bool(slow), "offloaded": offloaded,
            "warning": " ".join(warnings_) or None}


def kernel_report(model) -> dict:
    """Which quantized-linear classes back the layers, on which device, and whether that is fast.

    Accepts a Transformers model or a LoadedModel. On a GPU, GPTQModel should pick Marlin/
    Machete/ExllamaV2/AWQ GEMM kernels; a Torch* class there is the slow fallback (see
    `classify_kernels`). On the CPU, TorchAten* is the expected kernel. `plain_linear` counts
    ordinary nn.Linear layers left unquantized (usually lm_head).
    """
    decompressed = isinstance(model, LoadedModel) and model.format == "compressed-tensors"
    if isinstance(model, LoadedModel):
        if model.backend != "transformers":
            raise CourseError(
                "kernel_report inspects Transformers models (GPTQ/AWQ/hf). A GGUF model runs on llama.cpp, "
                "whose kernels are compiled in: see llama_cpp.llama_print_system_info() (notebook 00).")
        model = model.model
    layers = []
    plain = 0
    for module in model.modules():
        name = type(module).__name__
        if _is_quant_linear(module):
            tensor = next(iter(list(module.buffers(recurse=False)) + list(module.parameters(recurse=False))), None)
            layers.append((name, str(tensor.device) if tensor is not None else "meta"))
        elif name == "Linear":
            plain += 1
    report = {**classify_kernels(layers), "plain_linear": plain}
    if decompressed:
        report["expected"] = "none: compressed-tensors weights are decompressed to dense nn.Linear on load"
    return report


def _is_quant_linear(module) -> bool:
    return any(cls.__name__ == "BaseQuantLinear" for cls in type(module).__mro__)


def print_kernel_report(report: dict) -> None:
    """The kernel report as a few readable lines, the warning (if any) loud and last."""
    dense = report["expected"].startswith("none:")  # compressed-tensors, decompressed on load
    kernels = ", ".join(f"{name} x{n}" for name, n in report["quantized_linear"].items())
    print(f"quantized layers : {kernels or ('none (decompressed on load)' if dense else 'none (not quantized)')}")
    print(f"plain nn.Linear  : {report.get('plain_linear', 0)} "
          + ("(all of them: 4-bit weights decompressed on load)" if dense else "(left in full precision; usually lm_head)"))
    print(f"device(s)        : {', '.join(report['devices']) or '-'}")
    print(f"expected here    : {report['expected']}")
    if report["warning"]:
        print("\n" + "!" * 80 + "\n" + report["warning"] + "\n" + "!" * 80)
    elif dense:
        print("verdict          : no 4-bit kernel here: it runs (and takes memory) like the full-precision model")
    else:
        print("verdict          : OK, the expected kernel for this device")


# ---- loading --------------------------------------------------------------------------------

def pick_device(device: str = "auto") -> str:
    """Where to run: "auto" means CUDA when torch sees a GPU, else the CPU.

    "cuda" / "cuda:1" ask for a GPU and fail clearly if torch has none. "auto" never picks Apple's
    MPS: GPTQModel's MPS kernels need MLX, and llama.cpp uses Metal by itself; ask for "mps" by name.
    """
    if device in (None, "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = torch.__version__
            raise CourseError(
                f"device={device!r} but torch {build} sees no CUDA GPU"
                + (" (it is a CPU-only build)" if "+cpu" in build or torch.version.cuda is None else "")
                + ". Use device='auto' or 'cpu' here; on a GPU machine install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/) and check `nvidia-smi`.")
    elif device not in ("cpu", "mps"):
        raise CourseError(f"device={device!r} is not one the course knows: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return device


def normalize_dtype(dtype) -> str | None:
    """'float32' / 'bfloat16' / 'float16' from a name, an alias (fp32, bf16, fp16), a torch.dtype; None for auto."""
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "").lower()
    if name not in _DTYPE_ALIASES:
        raise CourseError(f"dtype={dtype!r} is not one the course loads: use None (the checkpoint's own), "
                          "'bfloat16', 'float16' or 'float32'.")
    return _DTYPE_ALIASES[name]


def checkpoint_dtype(path) -> str | None:
    """The dtype a Transformers folder records in its config.json (None if it records none)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    recorded = cfg.get("dtype") or cfg.get("torch_dtype")
    try:
        return normalize_dtype(recorded) if recorded else None
    except CourseError:
        return None


def resolve_dtype(path, fmt: str, device: str, dtype="auto", work: str = "decode"):
    """The float type a Transformers-format model is loaded in, and why: a `precision.DtypeChoice`.

    "auto" applies the course's rule (helpers.precision) for this device and kind of work; None keeps
    the checkpoint's own; anything else is taken as asked.
    """
    from .precision import DtypeChoice, compute_dtype

    if dtype is None:
        return DtypeChoice(checkpoint_dtype(path), "the checkpoint's own (config.json)")
    if str(dtype) != "auto":
        return DtypeChoice(normalize_dtype(dtype), "asked for")
    if fmt in ("gptq", "awq") and not device.startswith("cuda"):
        return DtypeChoice("bfloat16", "GPTQModel's CPU 4-bit kernels take bf16 (fp32 input is cast to bf16)")
    return compute_dtype(device, work)


def load_model(source, device: str = "auto", dtype: str | None = "auto", n_ctx: int = 4096,
               n_threads: int | None = None, check_memory: bool = True,
               trust_remote_code: bool = False, allow_pickle: bool = False, work: str = "decode") -> LoadedModel:
    """Load a .gguf file, a model folder or a hub id ("owner/name"), whatever its format.

    device: "auto" (CUDA if torch sees a GPU, else CPU), "cpu", "cuda"/"cuda:N" or "mps". The whole
      model goes to that one device (device_map=device): no silent offloading of what does not fit,
      the memory check refuses instead.
    dtype (Transformers only): "auto" picks by the course's rule (helpers.precision) for the device
      and `work`, and `lm.dtype_reason` says why; None keeps the checkpoint's own (config.json); or
      "bfloat16" / "float16" / "float32". fp32 doubles the memory of every float tensor.
    work: "decode" (generating, chatting: the default) or "batch" (perplexity, long prompts), which
      on a CPU without native bf16 is faster in fp32.
    n_ctx (llama.cpp only): the context window to allocate (its KV cache grows with it).
    n_threads: CPU threads (default `default_threads()`).
    check_memory: run `check_memory_fit` first and refuse what will not fit.
    trust_remote_code: off by default, so no Python code from a model repo runs; turn it on only after
      reading that code. allow_pickle: load *.bin/*.pt weights (pickle can run code), off by default.
    """
    path = _resolve_source(source, allow_pickle=allow_pickle)
    fmt = detect_format(path)
    if fmt == "gguf" and path.is_dir():
        path = next(path.glob("*.gguf"))
    device = pick_device(device)
    choice = resolve_dtype(path, fmt, device, dtype, work) if fmt != "gguf" else None
    dtype = choice.dtype if choice else None
    if fmt != "gguf":
        if not allow_pickle:
            _require_safetensors(path)
        elif not any(path.glob("*.safetensors")):
            warnings.warn(f"allow_pickle=True: loading pickle weights (*.bin/*.pt) from {path}. Unpickling can "
                          "run any code the file's author put in it; do this only for sources you trust, and "
                          "prefer a safetensors copy.", UserWarning, stacklevel=2)
        if fmt in ("gptq", "awq"):
            _require_gptqmodel(fmt)
        if fmt == "compressed-tensors":
            _require_compressed_tensors()
        if not trust_remote_code:
            _refuse_remote_code(path)
        else:
            warnings.warn(f"trust_remote_code=True: Python files shipped with {path.name} (named in its "
                          "config.json auto_map, if any) will run on this machine with your permissions. "
                          "Do this only after reading that code; the course keeps it off.",
                          UserWarning, stacklevel=2)
    if check_memory:  # "as <dtype>" in its message only when the load really casts the checkpoint
        check_memory_fit(path, fmt, device=device, dtype=dtype if dtype != checkpoint_dtype(path) else None)
    if fmt == "gguf":
        return _load_llama_cpp(path, device, n_ctx, n_threads or default_threads())
    lm = _load_transformers(path, fmt, device, dtype, n_threads or default_threads(), trust_remote_code)
    lm.dtype_reason = choice.reason
    return lm


def looks_like_hub_id(text: str) -> bool:
    """'owner/name' (one slash, no spaces, not starting like a path)."""
    return (text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
            and all(text.split("/")))


def _resolve_source(source, allow_pickle: bool = False) -> Path:
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not looks_like_hub_id(text):
        return path  # detect_format raises a clear "does not exist"
    here = f"{text!r} is not a file or folder here (looked in {Path.cwd()}), so it was taken as a hub id"
    try:
        from .hub import download_model  # a hub id: fetch (or reuse) a local copy
    except ImportError as err:
        raise ModelNotFoundError(
            f"{here}, but downloading is not available ({err}). Download the model first (notebook 01) and "
            "pass its local folder or .gguf file, or check the spelling of the path.") from None
    try:
        return Path(download_model(text, allow_pickle=allow_pickle))
    except CourseError as err:  # keep the hub's own error class, say why the hub was asked at all
        err.args = (f"{here}. {err}",) + err.args[1:]
        raise


def _require_safetensors(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise CourseError(
            f"{path} has only pickle weights (*.bin/*.pt), which can run code when loaded. "
            "Prefer a safetensors copy of the model; to load these anyway, pass allow_pickle=True "
            "(only for sources you trust).")
    raise NotAModelError(f"{path} has a config.json but no weights (*.safetensors). Is the download complete?")


def _refuse_remote_code(path: Path) -> None:
    """A model whose architecture exists only as Python code in its repo cannot load without running it."""
    cfg = json.loads((path / "config.json").read_text())
    if not cfg.get("auto_map"):
        return
    from transformers import CONFIG_MAPPING

    if cfg.get("model_type") in CONFIG_MAPPING:
        return  # Transformers has this architecture built in and ignores the repo's code
    files = ", ".join(sorted(p.name for p in path.glob("*.py"))) or "named in config.json auto_map"
    raise CourseError(
        f"{path.name} defines its architecture ({cfg.get('model_type')!r}) in Python code shipped with the "
        f"model ({files}), and loading it would run that code. The course keeps trust_remote_code=False. "
        "Prefer a model Transformers supports natively; if you have read that code and trust it, pass "
        "trust_remote_code=True.")


# llama.cpp start-up notes that llama-cpp-python prints even with verbose=False, and that ask nothing of
# the learner: Gemma 3's sliding-window cache kept at full size (expected), and a vocabulary-only load
# having no training context to compare with.
HARMLESS_LLAMA_NOTES = ("llama_kv_cache_iswa: using full-size SWA cache",
                        "llama_context: n_ctx_seq (512) > n_ctx_train (0)")


# A Llama still open when Python exits is freed by its __del__ after llama_cpp's module globals are gone,
# which prints "Exception ignored in: <function Llama.__del__ ...> TypeError: 'NoneType' object is not
# callable". Closing the ones new_llama made, while the interpreter is still whole, prevents it.
_open_llamas: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_llamas() -> None:
    for llm in list(_open_llamas):
        with contextlib.suppress(Exception):
            llm.close()


def new_llama(path, **kwargs):
    """llama_cpp.Llama(model_path=path, verbose=False, **kwargs), without the harmless start-up notes above
    (every other line llama.cpp writes still shows)."""
    import io
    import sys

    from llama_cpp import Llama

    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            llm = Llama(model_path=str(path), verbose=False, **kwargs)
        _open_llamas.add(llm)
        return llm
    finally:
        for line in caught.getvalue().splitlines(keepends=True):
            if not line.startswith(HARMLESS_LLAMA_NOTES):
                sys.stderr.write(line)


def _load_llama_cpp(path: Path, device: str, n_ctx: int, n_threads: int) -> LoadedModel:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingBackendError(
            "GGUF files run on llama-cpp-python, which is not installed. Run `make setup` (it builds "
            "llama-cpp-python from source, ~3-13 minutes once) or `pip install llama-cpp-python`.") from None
    header = check_gguf_header(path)
    started = time.perf_counter()
    n_gpu_layers = -1 if device.startswith("cuda") else 0
    try:
        llm = new_llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                        n_gpu_layers=n_gpu_layers)
    except ValueError as err:  # llama.cpp says only "Failed to load model from file"
        raise NotAModelError(
            f"llama.cpp could not load {path} ({err}). The file has a GGUF header "
            f"({header['tensor_count']} tensors) but is damaged or truncated ({header['bytes']:,} bytes): "
            "download it again.") from None
    notes = []
    if "tokenizer.chat_template" not in llm.metadata:
        # Without a template llama-cpp-python silently falls back to llama-2's format.
        arch = llm.metadata.get("general.architecture", "")
        if arch.startswith("gemma"):
            llm.chat_format = "gemma"
            notes.append("GGUF has no chat template; using chat_format='gemma'")
    return LoadedModel(model=llm, tokenizer=None, format="gguf", backend="llama.cpp", path=path,
                       device="cuda" if n_gpu_layers else "cpu", dtype=file_type_name(llm.metadata.get("general.file_type")) or "GGUF",
                       load_seconds=time.perf_counter() - started, context_length=llm.n_ctx(), notes=notes)


def _load_transformers(path: Path, fmt: str, device: str, dtype: str | None, n_threads: int,
                       trust_remote_code: bool) -> LoadedModel:
    import torch

    _quiet_library_noise()
    torch.set_num_threads(n_threads)
    if fmt in ("gptq", "awq"):
        _require_gptqmodel(fmt)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # "auto" = the dtype config.json records; on CUDA, Transformers turns bf16 AWQ into fp16 itself.
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # GPTQModel calls a deprecated API
    extra = {}
    if fmt == "compressed-tensors":  # dense nn.Linear from the start: no kernel here runs its packed 4-bit layout
        from transformers import CompressedTensorsConfig

        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    with warnings.catch_warnings():  # "You passed `quantization_config` ...": we did, to set dequantize
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device,
                                                     trust_remote_code=trust_remote_code, **extra)
    model.eval()
    seconds = time.perf_counter() - started
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    lm = LoadedModel(model=model, tokenizer=tokenizer, format=fmt, backend="transformers", path=path,
                     device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
                     load_seconds=seconds, context_length=context)
    if fmt == "compressed-tensors":
        lm.notes.append(f"compressed-tensors: the 4-bit weights were decompressed to dense {lm.dtype} layers on "
                        "load, so it computes and takes memory like the full-precision model (vLLM runs them "
                        "packed, on a GPU)")
    if fmt in ("gptq", "awq"):
        report = kernel_report(model)
        lm.notes.append("kernel: " + ", ".join(report["quantized_linear"]))
        if report["warning"]:
            warnings.warn(report["warning"], stacklevel=2)
            lm.notes.append(report["warning"])
    return lm


# What Transformers 5 needs besides itself to load each format (see its quantizers/quantizer_*.py).
BACKEND_PACKAGES = {"gptq": ("gptqmodel", "optimum"), "awq": ("gptqmodel", "accelerate")}


def _require_gptqmodel(fmt: str) -> None:
    """Fail early and clearly if GPTQModel (or its companion package) is missing."""
    import importlib.util

    missing = [name for name in BACKEND_PACKAGES[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingBackendError(
            f"This is a {fmt.upper()} checkpoint; Transformers 5 loads {fmt.upper()} through GPTQModel "
            f"(+ {BACKEND_PACKAGES[fmt][1]}), and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (Transformers would fail with a "
            "confusing error such as NameError: name 'QuantizeConfig' is not defined). Install them: "
            "`pip install 'quantized-llms-locally[quant]'` or `pip install gptqmodel==7.6.0 optimum==2.3.0 "
            "accelerate`, then restart the kernel. (AutoGPTQ and AutoAWQ, which older tutorials use, no "
            "longer work with Transformers 5.)")
    try:
        import_gptqmodel_quietly()
    except ImportError as err:  # installed but broken (e.g. built for another torch): say so, not a traceback
        raise MissingBackendError(
            f"This is a {fmt.upper()} checkpoint, which loads through GPTQModel; gptqmodel is installed but "
            f"fails to import ({type(err).__name__}: {str(err)[:200]}). It usually means it was built for "
            "another torch version: reinstall it with `pip install --force-reinstall gptqmodel==7.6.0` "
            "(the course pins it), then restart the kernel.") from None


def _require_compressed_tensors() -> None:
    """Fail early and clearly if the compressed-tensors package is missing."""
    import importlib.util

    if importlib.util.find_spec("compressed_tensors") is None:
        raise MissingBackendError(
            "This is a compressed-tensors checkpoint (llm-compressor's format); Transformers reads it with the "
            "compressed-tensors package, which is not installed. Install it: `pip install "
            "'quantized-llms-locally[quant]'` or `pip install compressed-tensors==0.20.1`, then restart the kernel.")


def _quiet_library_noise() -> None:
    """Silence import-time chatter that is not about the learner's model (torchao's optional CUDA
    extensions on a CPU machine, torch's pytree notice about GPTQModel's enums)."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def import_gptqmodel_quietly():
    """Import GPTQModel without its banner and INFO chatter (warnings still show)."""
    import io
    import logging

    # torch's pytree logger complains about GPTQModel's enums once per import; it is harmless
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel
    logging.getLogger("logbar").setLevel(logging.WARNING)
    return gptqmodel


# ---- one generate for every backend ---------------------------------------------------------

def bos_text(lm: LoadedModel) -> str:
    """The text of the model's <bos> token ('' when it has none)."""
    if lm.backend == "llama.cpp":
        return lm.model.detokenize([lm.model.token_bos()], special=True).decode("utf-8", errors="ignore")
    return lm.tokenizer.bos_token or ""


def encode_prompt(lm: LoadedModel, prompt: str, plain=()) -> list[int]:
    """The token ids the course feeds for `prompt`, on either backend, with exactly one <bos>: a prompt
    rendered by a chat template already starts with one, and a second would change the model's answer.

    `plain`: the texts inside `prompt` that a person typed (chat messages). A control token's text in
    them, such as a typed "<end_of_turn>", stays text. The libraries' defaults (Transformers'
    split_special_tokens=False, llama.cpp's special=True, both needed for the template's own markers)
    would turn it into the real token, and a user could end their turn and write the model's.
    """
    bos = bos_text(lm)
    has_bos = bool(bos) and prompt.startswith(bos)
    spans, at = [], 0
    for text in plain:  # in the order the template renders them
        text = text.strip()  # templates commonly trim
        start = prompt.find(text, at) if text else -1
        if start >= 0 and _tokenize(lm, text, special=True) != _tokenize(lm, text, special=False):
            spans.append((start, start + len(text)))
            at = start + len(text)
    if not spans:  # the usual case: one call
        if lm.backend == "llama.cpp":
            return lm.model.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True)
        return lm.tokenizer(prompt, add_special_tokens=not has_bos)["input_ids"]
    ids, at = _tokenize(lm, "", special=True, bos=not has_bos), 0
    for start, end in spans + [(len(prompt), len(prompt))]:
        ids += _tokenize(lm, prompt[at:start], special=True) + _tokenize(lm, prompt[start:end], special=False)
        at = end
    return ids


def _tokenize(lm: LoadedModel, text: str, special: bool, bos: bool = False) -> list[int]:
    """Ids of `text` alone; special=False keeps control-token text as text. bos: just the <bos> id, if any."""
    if lm.backend == "llama.cpp":
        return lm.model.tokenize(text.encode("utf-8"), add_bos=bos, special=special) if text or bos else []
    tok = lm.tokenizer
    ids = tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"] if text else []
    return ([tok.bos_token_id] if bos and tok("")["input_ids"][:1] == [tok.bos_token_id] else []) + ids


def generate(lm: LoadedModel, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             **kwargs) -> str:
    """Complete `prompt` and return only the new text (greedy when temperature is 0)."""
    ids = encode_prompt(lm, prompt)  # one <bos>, never two
    max_new_tokens = fit_context(lm, len(ids), max_new_tokens)  # a clear error, not a bare ValueError
    if lm.backend == "llama.cpp":
        out = lm.model.create_completion(ids, max_tokens=max_new_tokens, temperature=temperature, **kwargs)
        return out["choices"][0]["text"]
    import torch

    # input_ids *and* attention_mask; max_new_tokens counts only new tokens (max_length would count the
    # prompt too); pad_token_id given explicitly (Gemma's is 0, so no `or` shortcut: 0 is falsy).
    inputs = {"input_ids": torch.tensor([ids], device=lm.model.device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output_ids = lm.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                       pad_token_id=pad_token_id(lm.tokenizer), **sampling, **kwargs)
    return lm.tokenizer.decode(output_ids[0][len(ids):], skip_special_tokens=True)


def pad_token_id(tokenizer) -> int | None:
    """The pad id to give generate(): the tokenizer's own, else its end-of-sequence id.

    Never `pad_token_id or eos_token_id`: Gemma's pad id is 0, which `or` would throw away."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def fit_context(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """Refuse a prompt that fills the context window; shorten max_new_tokens to what fits, with a warning.

    One rule for both backends. llama.cpp: the n_ctx the model was created with (gguf_tools.context_report;
    llama-cpp-python itself raises a bare ValueError). Transformers would generate past the positions the
    model was trained on without a word; this stops at the window, as llama.cpp does, and says so.
    """
    if lm.backend == "llama.cpp":
        return min(max_new_tokens, context_report(lm.model, prompt_tokens, max_new_tokens)["output_room"])
    window = lm.context_length
    if prompt_tokens >= window:
        raise ContextOverflowError(
            f"The prompt is {prompt_tokens:,} tokens but {lm.path.name} has a {window:,}-token context window "
            "(max_position_embeddings in its config.json), so nothing is left for the answer. Shorten the "
            "prompt (or trim the chat history), or use a model with a longer context window.")
    room = window - prompt_tokens
    if max_new_tokens > room:
        warnings.warn(
            f"prompt ({prompt_tokens:,} tokens) + max_new_tokens ({max_new_tokens:,}) exceed the {window:,}-token "
            f"context window of {lm.path.name}: the answer will stop after {room:,} tokens. Shorten the prompt "
            "or lower max_new_tokens to get all of it.", ContextTruncationWarning, stacklevel=3)
        return room
    return max_new_tokens
