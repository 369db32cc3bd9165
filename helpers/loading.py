"""Load a model in any of the course's formats with one call, and see what you loaded.

    lm = load_model(course_models.model_path("gptq"))   # or a .gguf file, a folder, a hub id
    print(lm)                                           # format, backend, device, dtype, time
    generate(lm, "The capital of France is", max_new_tokens=20)

Formats are detected from the files: a `.gguf` file goes to llama.cpp (llama-cpp-python);
a folder with `config.json` goes to Transformers, and its
`quantization_config.quant_method` says whether it is GPTQ, AWQ (both through GPTQModel) or
plain ("hf"). Before loading, `check_memory_fit` compares what the weights will need with
the free RAM (or GPU memory) and refuses with the numbers instead of letting the kernel die.
"""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CourseError

GGUF_MAGIC = b"GGUF"
# What loading costs beyond the weights: runtime, activations, allocator slack (stated, not measured
# per model; the course measures the real figure in notebooks 04 and 08).
MEMORY_OVERHEAD_FRACTION = 0.20
MEMORY_OVERHEAD_BYTES = 300 * 2**20


class ModelNotFoundError(CourseError):
    """The path or hub id does not point at a model."""


class NotAModelError(CourseError):
    """The path exists but holds no model we can load."""


class MissingBackendError(CourseError):
    """A library the format needs is not installed."""


class NotEnoughMemoryError(CourseError):
    """The model would not fit in the free memory."""


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

    def __repr__(self) -> str:
        return (f"LoadedModel(format={self.format!r}, backend={self.backend!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}, context_length={self.context_length}, "
                f"load_seconds={self.load_seconds:.1f}, path='{self.path}')")


# ---- what is this path? ---------------------------------------------------------------------

def check_gguf_header(path: str | os.PathLike) -> dict:
    """Read a GGUF header (magic, version, counts); raise NotAModelError if it is not a GGUF file."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        found = head[:4]
        raise NotAModelError(
            f"{path} is not a GGUF file: it starts with {found!r}, a GGUF file starts with b'GGUF'. "
            "Was the download an HTML error page or a different format? Download it again "
            "(notebook 01) or pick the right file.")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise NotAModelError(f"{path}: GGUF version {version} is not one llama.cpp reads (2 or 3).")
    return {"version": version, "tensor_count": n_tensors, "kv_count": n_kv, "bytes": path.stat().st_size}


def detect_format(path: str | os.PathLike) -> str:
    """'gguf', 'gptq', 'awq' or 'hf' for a local file or folder (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Build the course models with `python -m helpers.course_models build`, "
            "download a model (notebook 01), or check the spelling of the path.")
    if path.is_file():
        if path.suffix.lower() == ".gguf" or path.read_bytes()[:4] == GGUF_MAGIC:
            check_gguf_header(path)
            return "gguf"
        raise NotAModelError(f"{path} is a file but not a .gguf model. Pass a .gguf file or a model folder.")
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
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    if method in (None, ""):
        return "hf"
    if method in ("gptq", "awq"):
        return method
    raise NotAModelError(f"{path} is quantized with {method!r}; this course loads GPTQ, AWQ and GGUF.")


def weights_bytes(path: str | os.PathLike) -> int:
    """Bytes of model weights on disk (a .gguf file, or the *.safetensors/*.bin of a folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
    return sum(p.stat().st_size for p in files)


# ---- will it fit? ---------------------------------------------------------------------------

def free_memory_bytes(device: str = "cpu") -> int:
    """Free RAM (available, as the kernel counts it) or free memory of a CUDA device."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_memory_bytes(path, fmt: str, dtype: str | None = None) -> int:
    """Weights in memory plus a stated overhead (20% + 300 MiB)."""
    weights = weights_bytes(path)
    if fmt == "hf" and dtype in ("float32", "fp32"):
        weights *= 2  # bf16/fp16 checkpoints double in fp32
    return int(weights * (1 + MEMORY_OVERHEAD_FRACTION) + MEMORY_OVERHEAD_BYTES)


def check_memory_fit(path, fmt: str, device: str = "cpu", dtype: str | None = None,
                     free_bytes: int | None = None) -> dict:
    """Refuse (NotEnoughMemoryError) before loading if the model would not fit; return the figures."""
    need = estimate_memory_bytes(path, fmt, dtype)
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    figures = {"need_bytes": need, "free_bytes": free, "device": device}
    if need > free:
        where = "GPU memory" if device.startswith("cuda") else "RAM"
        raise NotEnoughMemoryError(
            f"Not loading {Path(path).name}: it needs about {need / 2**30:.1f} GiB of {where} "
            f"({weights_bytes(path) / 2**30:.1f} GiB of weights + {MEMORY_OVERHEAD_FRACTION:.0%} + 300 MiB overhead), "
            f"and {free / 2**30:.1f} GiB is free. Close other notebooks or kernels, choose a smaller "
            "model or a 4-bit file (GGUF Q4_K_M, GPTQ or AWQ), or pass check_memory=False if you know better.")
    return figures


# ---- which kernels run the quantized layers? -----------------------------------------------

def kernel_report(model) -> dict:
    """Which quantized-linear classes back the layers, on which device, and whether that is fast.

    On a GPU, GPTQModel should pick Marlin/Machete/ExllamaV2/AWQ GEMM kernels; a Torch* class
    there is the slow fallback (the old "CUDA extension not installed" trap, now visible).
    On the CPU, TorchAten* is the expected kernel.
    """
    counts: dict[str, int] = {}
    devices: set[str] = set()
    plain = 0
    for module in model.modules():
        name = type(module).__name__
        if _is_quant_linear(module):
            counts[name] = counts.get(name, 0) + 1
            for tensor in list(module.buffers(recurse=False)) + list(module.parameters(recurse=False)):
                devices.add(str(tensor.device))
                break
        elif name == "Linear":
            plain += 1
    on_gpu = any(d.startswith("cuda") for d in devices)
    slow = sorted(n for n in counts if on_gpu and n.startswith(("Torch", "AwqTorch")))
    warning = None
    if slow:
        warning = (f"SLOW KERNEL: the model is on the GPU but {', '.join(slow)} runs its quantized layers: "
                   "a pure-PyTorch fallback, many times slower than Marlin/ExllamaV2. Install a "
                   "CUDA build of gptqmodel (see notebook 00) or pass backend='marlin'.")
    return {"quantized_linear": counts, "plain_linear": plain, "devices": sorted(devices),
            "slow_fallback": bool(slow), "warning": warning}


def _is_quant_linear(module) -> bool:
    for cls in type(module).__mro__:
        if cls.__name__ == "BaseQuantLinear":
            return True
    return False


# ---- loading --------------------------------------------------------------------------------

def default_threads() -> int:
    """Threads for CPU inference: $QLLM_THREADS, else all cores (tests pin it to avoid oversubscription)."""
    return int(os.environ.get("QLLM_THREADS") or os.cpu_count() or 1)


def pick_device(device: str = "auto") -> str:
    """'auto' means CUDA when present, else CPU. (MPS is left out: GPTQModel has no MPS kernels.)"""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def load_model(source, device: str = "auto", dtype: str | None = None, n_ctx: int = 4096,
               n_threads: int | None = None, check_memory: bool = True,
               trust_remote_code: bool = False, allow_pickle: bool = False) -> LoadedModel:
    """Load a .gguf file, a model folder or a hub id, whatever its format.

    device: "auto" (CUDA if present), "cpu" or "cuda". dtype (Transformers only): None keeps the
    checkpoint's (bf16 for the course models); "float32" is slower on CPUs with bf16 support
    and doubles memory. n_ctx (llama.cpp only): context window to allocate.
    """
    path = _resolve_source(source, allow_pickle=allow_pickle)
    fmt = detect_format(path)
    if fmt == "gguf" and path.is_dir():
        path = next(path.glob("*.gguf"))
    device = pick_device(device)
    if fmt != "gguf" and not allow_pickle:
        _require_safetensors(path)
    if check_memory:
        check_memory_fit(path, fmt, device=device, dtype=dtype)
    if fmt == "gguf":
        return _load_llama_cpp(path, device, n_ctx, n_threads or default_threads())
    return _load_transformers(path, fmt, device, dtype, n_threads or default_threads(), trust_remote_code)


def _resolve_source(source, allow_pickle: bool = False) -> Path:
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
    if not looks_like_hub_id:
        return path  # detect_format raises a clear "does not exist"
    from .hub import download_model  # a hub id: fetch (or reuse) a local copy

    return Path(download_model(text, allow_pickle=allow_pickle))


def _require_safetensors(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CourseError(
            f"{path} has only pickle weights (*.bin/*.pt), which can run code when loaded. "
            "Prefer a safetensors copy of the model; to load these anyway, pass allow_pickle=True "
            "(only for sources you trust).")
    raise NotAModelError(f"{path} has a config.json but no weights (*.safetensors). Is the download complete?")


def _load_llama_cpp(path: Path, device: str, n_ctx: int, n_threads: int) -> LoadedModel:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise MissingBackendError(
            "GGUF files run on llama-cpp-python, which is not installed. Run `make setup` (it builds "
            "llama-cpp-python from source, ~3-13 minutes once) or `pip install llama-cpp-python`.") from None
    header = check_gguf_header(path)
    started = time.perf_counter()
    n_gpu_layers = -1 if device.startswith("cuda") else 0
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                    n_gpu_layers=n_gpu_layers, verbose=False)
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
                       device="cuda" if n_gpu_layers else "cpu", dtype=_gguf_type_name(llm),
                       load_seconds=time.perf_counter() - started, context_length=llm.n_ctx(), notes=notes)


def _gguf_type_name(llm) -> str:
    ftype = llm.metadata.get("general.file_type")
    names = {"0": "F32", "1": "F16", "2": "Q4_0", "7": "Q8_0", "15": "Q4_K_M", "17": "Q5_K_M", "18": "Q6_K",
             "32": "BF16"}
    return names.get(str(ftype), f"file_type {ftype}")


def _load_transformers(path: Path, fmt: str, device: str, dtype: str | None, n_threads: int,
                       trust_remote_code: bool) -> LoadedModel:
    import torch

    torch.set_num_threads(n_threads)
    if fmt in ("gptq", "awq"):
        _require_gptqmodel(fmt)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # GPTQModel calls a deprecated API
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=device,
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    seconds = time.perf_counter() - started
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    lm = LoadedModel(model=model, tokenizer=tokenizer, format=fmt, backend="transformers", path=path,
                     device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
                     load_seconds=seconds, context_length=context)
    if fmt in ("gptq", "awq"):
        report = kernel_report(model)
        if report["warning"]:
            warnings.warn(report["warning"], stacklevel=2)
            lm.notes.append(report["warning"])
    return lm


def _require_gptqmodel(fmt: str) -> None:
    import importlib.util

    missing = [name for name in ("gptqmodel", "optimum") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingBackendError(
            f"This is a {fmt.upper()} checkpoint; Transformers 5 loads {fmt.upper()} through GPTQModel "
            f"(+ optimum), and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            "(Transformers would fail with a confusing NameError: QuantizeConfig). Install them: "
            "`pip install 'quantized-llms-locally[quant]'` or `pip install gptqmodel==7.6.0 optimum`.")
    import_gptqmodel_quietly()


def import_gptqmodel_quietly():
    """Import GPTQModel without its banner and INFO chatter (warnings still show)."""
    import contextlib
    import io
    import logging

    # torch's pytree logger complains about GPTQModel's enums once per import; it is harmless
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel
    logging.getLogger("logbar").setLevel(logging.WARNING)
    return gptqmodel


# ---- one generate for every backend ---------------------------------------------------------

def generate(lm: LoadedModel, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             **kwargs) -> str:
    """Complete `prompt` and return only the new text (greedy when temperature is 0)."""
    if lm.backend == "llama.cpp":
        out = lm.model.create_completion(prompt, max_tokens=max_new_tokens, temperature=temperature,
                                         **kwargs)
        return out["choices"][0]["text"]
    import torch

    inputs = lm.tokenizer(prompt, return_tensors="pt").to(lm.model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output_ids = lm.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                       pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
                                       **sampling, **kwargs)
    return lm.tokenizer.decode(output_ids[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
