"""Making GGUF files with llama.cpp's own tools, as every GGUF on the Hub is made (notebook 04b).

    find_converter()                                    # convert_hf_to_gguf.py, from the sdist
    convert_hf_to_gguf(hf_dir, out, vocab_from=gguf)    # HF folder -> f16 GGUF
    quantize_gguf(f16, out, "Q4_0")                     # llama.cpp's quantizer
    python -m course.gguf_convert converter --download  # fetch the converter once (internet)

The llama-cpp-python wheel holds the compiled library and the quantizer, not the Python converter;
its source archive (the sdist pip builds the wheel from) does. Everything here writes atomically.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .env import cache_dir, default_threads, installed_version
from .errors import CourseError, MissingBackendError, NotAModelError
from .gguf_tools import read_gguf, validate_gguf
from .procs import child_command


class ConverterNotFoundError(MissingBackendError):
    """llama.cpp's HF-to-GGUF converter is not on this machine."""


# ---- obtaining llama.cpp's converter (it is not in the wheel) ---------------------------------

CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def llama_cpp_version() -> str:
    version = installed_version("llama-cpp-python", missing=None)
    if version is None:
        raise MissingBackendError("llama-cpp-python is not installed; run `make setup`.")
    return version


def converter_dir() -> Path:
    """Where the course keeps the converter extracted from llama-cpp-python's sdist."""
    return cache_dir() / "tools" / f"llama.cpp-{llama_cpp_version()}"


def converter_download_command(dest: str = ".") -> str:
    return (
        "pip download --no-deps --no-binary :all: "
        f"llama-cpp-python=={llama_cpp_version()} -d {dest}"
    )


def _pip_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("PIP_CACHE_DIR"):
        dirs.append(Path(os.environ["PIP_CACHE_DIR"]))
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "cache", "dir"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(Path(out.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    dirs.append(Path.home() / ".cache" / "pip")
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def _is_sdist(path: Path, version: str) -> bool:
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                return False
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
            return first is not None and first.name.split("/")[0] == f"llama_cpp_python-{version}"
    except (OSError, tarfile.TarError, EOFError):
        return False


def find_sdist(extra_dirs=()) -> Path | None:
    """llama-cpp-python's source archive for the installed version: $QLLM_LLAMA_CPP_SDIST, a
    llama_cpp_python-X.tar.gz in `extra_dirs`, or the copy pip kept in its HTTP cache when it
    downloaded the sdist to build the wheel (pip >= 23.3 stores it as a raw `*.body` file)."""
    version = llama_cpp_version()
    if os.environ.get("QLLM_LLAMA_CPP_SDIST"):
        candidate = Path(os.environ["QLLM_LLAMA_CPP_SDIST"]).expanduser()
        if _is_sdist(candidate, version):
            return candidate
    for folder in map(Path, extra_dirs):
        candidate = folder / f"llama_cpp_python-{version}.tar.gz"
        if _is_sdist(candidate, version):
            return candidate
    for cache in _pip_cache_dirs():
        for body in (cache / "http-v2").rglob("*.body"):
            if _is_sdist(body, version):  # gzip magic, then the archive's top folder name
                return body
    return None


def extract_converter(sdist: Path) -> Path:
    """Extract convert_hf_to_gguf.py and what it imports from the sdist into converter_dir()."""
    target = converter_dir()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    prefix = f"llama_cpp_python-{llama_cpp_version()}/vendor/llama.cpp/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            rel = member.name[len(prefix) :] if member.name.startswith(prefix) else None
            if (
                rel
                and (member.isfile() or member.isdir())
                and any(
                    rel == m or (m.endswith("/") and rel.startswith(m)) for m in CONVERTER_MEMBERS
                )
            ):
                member.name = rel
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise ConverterNotFoundError(
                f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py."
            )
        partial.mkdir(parents=True)
        tar.extractall(partial, members=members, filter="data")
    (partial / "SOURCE.txt").write_text(
        f"extracted from {sdist.name} (llama-cpp-python {llama_cpp_version()})\n"
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target / "convert_hf_to_gguf.py"


def download_sdist(dest: Path) -> Path:
    """pip download the sdist (needs the internet: 76 MB from PyPI)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--quiet",
        f"llama-cpp-python=={llama_cpp_version()}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / f"llama_cpp_python-{llama_cpp_version()}.tar.gz"
    if proc.returncode != 0 or not sdist.exists():
        raise ConverterNotFoundError(
            "Downloading llama-cpp-python's source from PyPI failed:\n"
            f"{proc.stderr.strip()[-800:]}\n"
            f"Without the internet, copy the sdist here and set QLLM_LLAMA_CPP_SDIST=/path/to/it."
        )
    return sdist


def find_converter(download: bool = False) -> Path:
    """Path of convert_hf_to_gguf.py, extracting it from the sdist on first use.

    Looks in the course cache, then for the sdist (see find_sdist). With download=True it may
    fetch the sdist from PyPI; otherwise it raises ConverterNotFoundError saying how to get it.
    """
    script = converter_dir() / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    sdist = find_sdist()
    if sdist is None and download:
        sdist = download_sdist(converter_dir().parent / "sdist")
    if sdist is None:
        raise ConverterNotFoundError(
            "llama.cpp's HF-to-GGUF converter (convert_hf_to_gguf.py) is not installed: the "
            "llama-cpp-python wheel does not contain it, and its source archive (sdist) is neither "
            "in pip's cache nor in $QLLM_LLAMA_CPP_SDIST. With the internet, run "
            "`python -m course.gguf_convert converter --download` once: it runs "
            f"`{converter_download_command('<tmp>')}` (76 MB from PyPI) and keeps only the "
            "converter. Or clone https://github.com/ggml-org/llama.cpp and pass its "
            "convert_hf_to_gguf.py as `converter=`."
        )
    script = extract_converter(sdist)
    if sdist.parent == converter_dir().parent / "sdist":
        shutil.rmtree(sdist.parent, ignore_errors=True)  # 76 MB we no longer need
    return script


# ---- making GGUF files ------------------------------------------------------------------------


def write_sentencepiece_files(gguf_path, folder) -> list[Path]:
    """Rebuild tokenizer.model (+ added_tokens.json) in `folder` from a GGUF's SentencePiece
    vocabulary.

    The course's HF folder was made from the GGUF and has only tokenizer.json; without a
    tokenizer.model llama.cpp's converter switches to a GPT-2 style BPE vocabulary and picks a
    pre-tokenizer by a hash. The converter reads token types through SentencePiece, which has no
    "user defined" test, so those tokens (Gemma's runs of newlines and spaces) go in
    added_tokens.json.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        raise MissingBackendError(
            "Writing tokenizer.model needs sentencepiece and protobuf: "
            "`pip install sentencepiece protobuf`."
        ) from None
    header = read_gguf(gguf_path, keep_arrays=True)
    meta = header.metadata
    if meta.get("tokenizer.ggml.model") != "llama":
        raise CourseError(
            f"{gguf_path} has a {meta.get('tokenizer.ggml.model')!r} vocabulary, not a "
            "SentencePiece ('llama') one; copy its tokenizer files instead."
        )
    tokens = header.arrays["tokenizer.ggml.tokens"]
    scores = header.arrays["tokenizer.ggml.scores"].tolist()
    types = header.arrays["tokenizer.ggml.token_type"].tolist()
    model = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types, strict=False):
        entry = model.pieces.add()
        # GGUF token types use SentencePiece's numbers
        entry.piece, entry.score, entry.type = piece, score, kind
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    spec.unk_id = meta.get("tokenizer.ggml.unknown_token_id", 3)
    spec.bos_id = meta.get("tokenizer.ggml.bos_token_id", 2)
    spec.eos_id = meta.get("tokenizer.ggml.eos_token_id", 1)
    spec.pad_id = meta.get("tokenizer.ggml.padding_token_id", 0)
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces = "identity", False, False
    folder = Path(folder)
    model_path = folder / "tokenizer.model"
    model_path.write_bytes(model.SerializeToString())
    USER_DEFINED = 4
    added = {
        piece: i
        for i, (piece, kind) in enumerate(zip(tokens, types, strict=False))
        if kind == USER_DEFINED
    }
    added_path = folder / "added_tokens.json"
    added_path.write_text(json.dumps(added, ensure_ascii=False))
    return [model_path, added_path]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:  # e.g. Windows without developer mode
        shutil.copy2(src, dst)


def convert_hf_to_gguf(
    hf_dir,
    out_path,
    outtype: str = "f16",
    vocab_from=None,
    vocab_only: bool = False,
    model_name: str | None = None,
    converter: Path | None = None,
) -> dict:
    """Run llama.cpp's convert_hf_to_gguf.py on a Transformers folder; write `out_path` atomically.

    vocab_from: a SentencePiece GGUF whose vocabulary becomes the folder's tokenizer.model (see
    write_sentencepiece_files); None converts the folder as it is. Returns seconds and the log path.
    """
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if not (hf_dir / "config.json").exists():
        raise NotAModelError(f"{hf_dir} is not a Transformers model folder (no config.json).")
    converter = converter or find_converter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(out_path.name + ".src")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    partial = out_path.with_name(out_path.name + ".partial")
    log_path = out_path.with_name(out_path.name + ".log")
    try:
        # the converter reads the folder; we only add files to a view of it
        for item in hf_dir.iterdir():
            if item.is_file() and not (
                vocab_from and item.name in ("tokenizer.model", "added_tokens.json")
            ):
                _link_or_copy(item.resolve(), staging / item.name)
        if vocab_from is not None:
            write_sentencepiece_files(vocab_from, staging)
            model_name = model_name or read_gguf(vocab_from).metadata.get("general.name")
        args = [
            str(staging),
            "--outtype",
            outtype,
            "--outfile",
            str(partial),
            "--model-name",
            model_name or hf_dir.name,
        ]
        if vocab_only:
            args.append("--vocab-only")
        # what a learner would type: the folder itself, not the view of it the converter reads
        command = shlex.join(["python", str(converter), str(hf_dir), *args[1:]]).replace(
            str(partial), str(out_path)
        )
        # its own gguf-py; a child that dies with us, so no converter goes on writing after a
        # Ctrl-C or kill
        cmd, env = child_command(
            str(converter), *args, env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        )
        started = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not partial.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise CourseError(
                f"convert_hf_to_gguf.py failed (exit code {proc.returncode}); nothing was written. "
                f"Full log: {log_path}\n--- last lines ---\n{tail}"
            )
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": out_path, "seconds": seconds, "log": log_path, "command": command}


QUANT_TYPES = (
    "F16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q3_K_M",
    "Q2_K",
)


def quantize_gguf(src, out_path, qtype: str, n_threads: int | None = None) -> dict:
    """Quantize a (f16/bf16/f32) GGUF to `qtype` with llama.cpp's own quantizer; write
    atomically."""
    import llama_cpp

    from gguf import LlamaFileType

    ftype = getattr(LlamaFileType, f"MOSTLY_{qtype}", None)
    if ftype is None:
        raise CourseError(
            f"Unknown quantization type {qtype!r}; choose one of {', '.join(QUANT_TYPES)} "
            "(or another name in gguf.LlamaFileType)."
        )
    validate_gguf(src)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = n_threads or default_threads()
    started = time.perf_counter()
    try:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
        if status != 0 or not partial.exists():
            raise CourseError(
                f"llama.cpp could not quantize {src} to {qtype} (status {status}). Is the source "
                "an unquantized (F16/BF16/F32) GGUF? Requantizing a quantized file is refused."
            )
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "path": out_path,
        "seconds": time.perf_counter() - started,
        # the same quantizer from llama.cpp's command line (the wheel has the library, not the tool)
        "command": shlex.join(["llama-quantize", str(src), str(out_path), qtype]),
    }
