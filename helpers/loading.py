"""Load a model in any of the course's formats with one call, and see what you loaded.

    lm = load_model(course_models.model_path("gptq"))   # or a .gguf file, a folder, a hub id
    print(lm)                                           # format, backend, device, dtype, time

A `.gguf` file goes to llama.cpp (llama-cpp-python); a folder with `config.json` to Transformers,
and its `quantization_config.quant_method` says GPTQ or AWQ (both through GPTQModel),
compressed-tensors (llm-compressor's format: decompressed to dense layers on a CPU) or plain ("hf").
`helpers.memory` refuses first what would not fit. A missing local path that looks like `owner/name`
is fetched with `helpers.hub`.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import sys
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import default_threads
from .errors import (
    CourseError,
    Float16OverflowError,
    MissingBackendError,
    ModelNotFoundError,
    NotAModelError,
    NotEnoughMemoryError,
    UnsupportedFormatError,
)
from .gguf_tools import file_type_name, read_gguf, validate_gguf
from .hub import PICKLE_PATTERNS, pickle_refusal
from .kernels import kernel_report, pick_backend, require_backend
from .memory import (
    check_memory_fit,
    checkpoint_dtype,
    checkpoint_model_type,
    free_memory_bytes,
    freed_blocks_go_back,
    pick_device,
    resolve_dtype,
)
from .precision import DtypeChoice, overflows_float16

_METHOD_HINTS = {
    "bitsandbytes": (
        " (bitsandbytes quantizes on the fly at load time; it needs `pip install bitsandbytes`)"
    ),
    "fp8": " (FP8 needs a recent NVIDIA GPU)",
}


@dataclass
class LoadedModel:
    """A loaded model, whatever the format: `model` is a Transformers model or a llama_cpp.Llama."""

    model: Any
    tokenizer: Any  # None for llama.cpp, which tokenizes itself
    format: str  # "gguf" | "gptq" | "awq" | "compressed-tensors" | "hf"
    backend: str  # "llama.cpp" | "transformers"
    path: Path
    device: str
    dtype: str
    load_seconds: float
    context_length: int
    notes: list[str] = field(default_factory=list)
    dtype_reason: str = ""  # why this dtype (helpers.precision's rule, or "asked for")
    # why a 4-bit kernel was asked for by name (helpers.kernels.pick_backend)
    kernel_reason: str = ""

    def __repr__(self) -> str:
        why = f" ({self.dtype_reason})" if self.dtype_reason else ""
        return (
            f"LoadedModel(format={self.format!r}, backend={self.backend!r}, "
            f"device={self.device!r}, dtype={self.dtype!r}{why}, "
            f"context_length={self.context_length}, load_seconds={self.load_seconds:.1f}, "
            f"path='{self.path}')"
        )


def check_gguf_header(path) -> dict:
    """Version and counts of a whole GGUF file; else a NotAModelError subclass that says what the
    file is.
    """
    header = validate_gguf(Path(path))
    return {
        "version": header.version,
        "tensor_count": len(header.tensors),
        "kv_count": len(header.metadata),
        "bytes": header.file_size,
    }


def detect_format(path) -> str:
    """'gguf', 'gptq', 'awq', 'compressed-tensors' or 'hf' for a local file or folder (module
    docstring).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Build the course models with `python -m course.models build`, "
            "download a model (notebook 01), or check the spelling of the path."
        )
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if path.suffix.lower() == ".gguf" or magic == b"GGUF":
            check_gguf_header(path)
            return "gguf"
        raise NotAModelError(
            f"{path} is a file but not a .gguf model (it starts with {magic!r}). Pass a .gguf "
            "file, or the folder that holds config.json and the *.safetensors weights (not a file "
            "inside it)."
        )
    config = path / "config.json"
    if not config.exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        hint = (
            f" It holds {len(ggufs)} .gguf files: pass one of them, e.g. {ggufs[0]}."
            if ggufs
            else ""
        )
        raise NotAModelError(
            f"{path} is a folder but not a model folder: it has no config.json.{hint} "
            "A Transformers model folder holds config.json plus *.safetensors weights."
        )
    try:
        return config_format(json.loads(config.read_text()), path)
    except ValueError as err:
        raise NotAModelError(
            f"{config} is not valid JSON ({err}); the download may be incomplete."
        ) from None


def config_format(cfg: dict, where) -> str:
    """'gptq', 'awq', 'compressed-tensors' or 'hf' from a config.json (as a dict) of the model at
    `where`.
    """
    method = str((cfg.get("quantization_config") or {}).get("quant_method") or "").lower()
    if method in ("", "gptq", "awq", "compressed-tensors"):
        return method or "hf"
    raise UnsupportedFormatError(
        f"{where} is quantized with {method!r} (config.json: quantization_config.quant_method). "
        "This course loads GPTQ, AWQ and compressed-tensors folders and GGUF files. Look for a "
        "-GPTQ, -AWQ or -GGUF version of the same model on the hub, or load this one with the "
        f"library its model card names{_METHOD_HINTS.get(method, '')}."
    )


def load_model(
    source,
    device: str = "auto",
    dtype: str | None = "auto",
    n_ctx: int = 4096,
    n_threads: int | None = None,
    check_memory: bool = True,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    work: str = "decode",
) -> LoadedModel:
    """Load a .gguf file, a model folder or a hub id ("owner/name"), whatever its format.

    device: "auto", "cpu", "cuda"/"cuda:N" or "mps" (`pick_device`); the whole model goes there, no
      silent offloading: the memory check (`check_memory=True`) refuses what does not fit instead.
    dtype (Transformers only): "auto" (`resolve_dtype` for the device and `work`: "decode", or
      "batch" for perplexity and long prompts; `lm.dtype_reason` says why), None (the checkpoint's
      own) or a name.
    n_ctx (llama.cpp only): the context window to allocate.
    n_threads: default `env.default_threads()`.
    trust_remote_code / allow_pickle: off, so nothing from a model repo runs code here unless you
      say so.
    """
    path = _resolve_source(source, allow_pickle=allow_pickle)
    fmt = detect_format(path)
    device = pick_device(device)
    if fmt == "gguf":
        path = next(path.glob("*.gguf")) if path.is_dir() else path
        if check_memory:
            check_memory_fit(path, fmt, device=device)
        return _load_llama_cpp(path, device, n_ctx, n_threads or default_threads())
    choice = resolve_dtype(path, fmt, device, dtype, work)
    _check_weights(path, allow_pickle)
    require_backend(fmt)
    _check_remote_code(path, trust_remote_code)
    settings = {
        "n_threads": n_threads or default_threads(),
        "trust_remote_code": trust_remote_code,
        "check_memory": check_memory,
    }
    overflows = overflows_float16(checkpoint_model_type(path))
    lm = _load_transformers_checked(path, fmt, device, choice, overflows, **settings)
    if lm.dtype != "float16" or not overflows_in_float16(lm):
        return lm
    if str(dtype) != "auto":
        raise Float16OverflowError(
            f"{path.name} overflows float16: a test forward pass in float16 gave inf or NaN "
            "logits, so every generation would print only padding (<pad>). Its activations exceed "
            "float16's range (largest value 65,504) inside its layers, as the Gemma family's do. "
            'Load it with dtype="bfloat16" (a CPU, or a GPU of compute capability 8.0 or newer), '
            'dtype="float32" (a T4 or older GPU, a Mac before macOS 14), or dtype="auto", which '
            "picks one of them."
        )
    # "auto" chose float16 for an architecture the rule does not know to overflow: now measured,
    # so load it again in what the device runs instead of float16
    del lm
    choice = resolve_dtype(path, fmt, device, dtype, work, overflows_float16=True)
    reason = f"{choice.reason}; measured: a float16 test forward pass gave inf or NaN"
    choice = DtypeChoice(choice.dtype, reason)
    return _load_transformers_checked(path, fmt, device, choice, True, **settings)


# The float16 check's text: a few ordinary tokens are enough for an overflowing model to give NaN.
FLOAT16_CHECK_TEXT = "The history of the printing press begins"


def overflows_in_float16(lm: LoadedModel) -> bool:
    """One short forward pass of a Transformers model: do its logits hold inf or NaN?"""
    import torch

    ids = lm.tokenizer(FLOAT16_CHECK_TEXT, return_tensors="pt").input_ids.to(lm.model.device)
    with torch.inference_mode():
        logits = lm.model(ids).logits
    return not bool(torch.isfinite(logits).all())


def _load_transformers_checked(
    path: Path,
    fmt: str,
    device: str,
    choice: DtypeChoice,
    overflows: bool,
    n_threads: int,
    trust_remote_code: bool,
    check_memory: bool,
) -> LoadedModel:
    """The memory check for `choice.dtype`, then the load, with the dtype's and kernel's reasons."""
    if check_memory:  # "as <dtype>" in its message only when the load really casts the checkpoint
        cast = None if choice.dtype == checkpoint_dtype(path) else choice.dtype
        check_memory_fit(path, fmt, device=device, dtype=cast)
    backend, kernel_reason = pick_backend(fmt, device, choice.dtype, overflows)
    lm = _load_transformers(
        path, fmt, device, choice.dtype, n_threads, trust_remote_code, backend, kernel_reason
    )
    lm.dtype_reason = choice.reason
    return lm


def looks_like_hub_id(text: str) -> bool:
    """'owner/name' (one slash, no spaces, not starting like a path)."""
    return (
        text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and " " not in text
        and all(text.split("/"))
    )


def _resolve_source(source, allow_pickle: bool = False) -> Path:
    path = Path(str(source)).expanduser()
    if path.exists() or not looks_like_hub_id(str(source)):
        return path  # detect_format raises a clear "does not exist"
    here = (
        f"{str(source)!r} is not a file or folder here (looked in {Path.cwd()}), so it was taken "
        "as a hub id"
    )
    try:
        from .downloading import download_model
    except ImportError as err:
        raise ModelNotFoundError(
            f"{here}, but downloading is not available ({err}). Download the model first "
            "(notebook 01) and pass its local folder or .gguf file, or check the spelling of "
            "the path."
        ) from None
    try:
        return Path(download_model(str(source), allow_pickle=allow_pickle))
    except CourseError as err:  # keep the hub's own error class, say why the hub was asked at all
        err.args = (f"{here}. {err}",) + err.args[1:]
        raise


def _check_weights(path: Path, allow_pickle: bool) -> None:
    """safetensors, or pickle weights only when allowed (unpickling can run code)."""
    if any(path.glob("*.safetensors")):
        return
    if not any(any(path.glob(pattern)) for pattern in PICKLE_PATTERNS):
        raise NotAModelError(
            f"{path} has a config.json but no weights (*.safetensors). Is the download complete?"
        )
    if not allow_pickle:
        raise pickle_refusal(path)
    warnings.warn(
        f"allow_pickle=True: loading pickle weights (*.bin/*.pt) from {path}. Unpickling can "
        "run any code the file's author put in it; do this only for sources you trust, and "
        "prefer a safetensors copy.",
        UserWarning,
        stacklevel=3,
    )


def _check_remote_code(path: Path, trust_remote_code: bool) -> None:
    """A model whose architecture exists only as Python code in its repo cannot load without running
    it.
    """
    if trust_remote_code:
        warnings.warn(
            f"trust_remote_code=True: Python files shipped with {path.name} (named in its "
            "config.json auto_map, if any) will run on this machine with your permissions. "
            "Do this only after reading that code; the course keeps it off.",
            UserWarning,
            stacklevel=3,
        )
        return
    cfg = json.loads((path / "config.json").read_text())
    if not cfg.get("auto_map"):
        return
    from transformers import CONFIG_MAPPING

    if cfg.get("model_type") in CONFIG_MAPPING:
        return  # Transformers has this architecture built in and ignores the repo's code
    files = ", ".join(sorted(p.name for p in path.glob("*.py"))) or "named in config.json auto_map"
    raise CourseError(
        f"{path.name} defines its architecture ({cfg.get('model_type')!r}) in Python code shipped "
        f"with the model ({files}), and loading it would run that code. The course keeps "
        "trust_remote_code=False. Prefer a model Transformers supports natively; if you have read "
        "that code and trust it, pass trust_remote_code=True."
    )


# llama.cpp start-up notes that llama-cpp-python prints even with verbose=False, and that ask
# nothing of the learner: Gemma 3's sliding-window cache kept at full size (expected), and a
# vocabulary-only load having no training context to compare with.
HARMLESS_LLAMA_NOTES = (
    "llama_kv_cache_iswa: using full-size SWA cache",
    "llama_context: n_ctx_seq (512) > n_ctx_train (0)",
)
# A Llama still open at exit is freed by its __del__ after llama_cpp's module globals are gone,
# which prints "Exception ignored in: <function Llama.__del__ ...> TypeError: 'NoneType' object is
# not callable". Closing the ones new_llama made, while the interpreter is still whole, prevents it.
_open_llamas: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_llamas() -> None:
    for llm in list(_open_llamas):
        with contextlib.suppress(Exception):
            llm.close()


def new_llama(path, **kwargs):
    """llama_cpp.Llama(model_path=path, verbose=False, **kwargs) without HARMLESS_LLAMA_NOTES (every
    other line llama.cpp writes still shows), closed before the interpreter exits."""
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
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingBackendError(
            "GGUF files run on llama-cpp-python, which is not installed. Run `make setup` (it "
            "builds llama-cpp-python from source, ~3-13 minutes once) or `pip install "
            "llama-cpp-python`."
        )
    header = check_gguf_header(path)
    started = time.perf_counter()
    n_gpu_layers = -1 if device.startswith("cuda") else 0
    try:
        llm = new_llama(
            path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
        )
    except ValueError as err:  # llama.cpp says only "Failed to load model from file"
        raise NotAModelError(
            f"llama.cpp could not load {path} ({err}). The file has a GGUF header "
            f"({header['tensor_count']} tensors) but is damaged or truncated ({header['bytes']:,} "
            "bytes): download it again."
        ) from None
    notes = []
    # Without a template llama-cpp-python silently falls back to llama-2's format.
    if "tokenizer.chat_template" not in llm.metadata and llm.metadata.get(
        "general.architecture", ""
    ).startswith("gemma"):
        llm.chat_format = "gemma"
        notes.append("GGUF has no chat template; using chat_format='gemma'")
    return LoadedModel(
        model=llm,
        tokenizer=None,
        format="gguf",
        backend="llama.cpp",
        path=path,
        device="cuda" if n_gpu_layers else "cpu",
        dtype=file_type_name(llm.metadata.get("general.file_type")) or "GGUF",
        load_seconds=time.perf_counter() - started,
        context_length=llm.n_ctx(),
        notes=notes,
    )


def load_gguf_in_transformers(
    path,
    device: str = "cpu",
    dtype: str | None = None,
    n_threads: int | None = None,
    check_memory: bool = True,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """A GGUF file read by Transformers' own GGUF reader (`gguf_file=`), which dequantizes every
    tensor on load: the model then computes, and takes memory, like a full-precision one (`dtype`;
    None keeps what the reader gives). The one place the course loads a GGUF into Transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_gguf_header(path)
    device = pick_device(device)
    if check_memory:
        need = read_gguf(path).n_params * (2 if dtype in ("bfloat16", "float16") else 4)
        free = free_memory_bytes(device)
        if need * 1.2 + 300 * 2**20 > free:
            raise NotEnoughMemoryError(
                f"Dequantizing {path.name} in Transformers needs about {need / 2**30:.1f} GiB "
                "for the weights alone "
                f"and {free / 2**30:.1f} GiB is free. Use llama.cpp (format 'gguf') for this file."
            )
    torch.set_num_threads(n_threads or default_threads())
    started = time.perf_counter()
    tokenizer = None
    if with_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        device_map=device,
        dtype=getattr(torch, dtype) if dtype else "auto",
    )
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        format="gguf",
        backend="transformers",
        path=path,
        device=str(model.device),
        dtype=str(model.dtype).replace("torch.", ""),
        load_seconds=time.perf_counter() - started,
        context_length=int(model.config.max_position_embeddings),
    )


def _load_transformers(
    path: Path,
    fmt: str,
    device: str,
    dtype: str | None,
    n_threads: int,
    trust_remote_code: bool,
    backend: str | None = None,
    kernel_reason: str = "",
) -> LoadedModel:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        AwqConfig,
        CompressedTensorsConfig,
        GPTQConfig,
    )

    torch.set_num_threads(n_threads)
    # GPTQModel calls a deprecated API
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    # dense nn.Linear from the start: no kernel here runs compressed-tensors' packed 4-bit layout
    extra = {}
    if fmt == "compressed-tensors":
        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    if backend:  # a GPTQModel kernel by name (pick_backend): the checkpoint's settings, that one
        recorded = json.loads((path / "config.json").read_text())["quantization_config"]
        config_class = GPTQConfig if fmt == "gptq" else AwqConfig
        extra["quantization_config"] = config_class.from_dict({**recorded, "backend": backend})
    load_dtype = dtype
    if fmt == "awq" and backend and dtype == "bfloat16":
        # on a GPU Transformers turns a bf16 AWQ load into fp16; an fp32 one it keeps, and every
        # bf16 weight of the checkpoint survives fp32 exactly on the way to bf16
        load_dtype = "float32"
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    # "You passed `quantization_config` ...": we did, to set dequantize or a backend
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        # dtype "auto" = what config.json records; on CUDA, Transformers makes bf16 AWQ fp16
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=getattr(torch, load_dtype) if load_dtype else "auto",
            device_map=device,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    if load_dtype != dtype:
        model.to(getattr(torch, dtype))
    model.eval()
    if fmt in ("gptq", "awq") and device == "cpu":
        # GPTQModel's CPU kernels repack each layer at its first forward: do it now, so the peak
        # belongs to the load the fit check guards, and the transient blocks are given back
        with freed_blocks_go_back(), torch.inference_mode():
            model(torch.tensor([[tokenizer.bos_token_id or 0]]))
    seconds = time.perf_counter() - started
    context = int(
        getattr(model.config.get_text_config(), "max_position_embeddings", 0)
        or tokenizer.model_max_length
    )
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        format=fmt,
        backend="transformers",
        path=path,
        device=str(model.device),
        dtype=str(model.dtype).replace("torch.", ""),
        load_seconds=seconds,
        context_length=context,
        kernel_reason=kernel_reason,
    )
    if fmt == "compressed-tensors":
        lm.notes.append(
            f"compressed-tensors: the 4-bit weights were decompressed to dense {lm.dtype} layers "
            "on load, so it computes and takes memory like the full-precision model (vLLM runs "
            "them packed, on a GPU)"
        )
    if fmt in ("gptq", "awq"):
        report = kernel_report(lm)
        lm.notes.append("kernel: " + ", ".join(report["quantized_linear"]))
        if report["warning"]:
            warnings.warn(report["warning"], stacklevel=2)
            lm.notes.append(report["warning"])
    return lm
