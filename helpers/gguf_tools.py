"""GGUF files: what is inside, whether they are whole, and how to make your own.

    header = validate_gguf(path)              # clear CourseError if missing, not GGUF, or truncated
    summary(header)                           # architecture, context, layers, chat template, file type
    quant_type_rows(header)                   # which quantization type each tensor group uses
    check_context(llm, prompt, max_tokens)    # refuse a prompt that cannot fit n_ctx, say how to size it
    find_converter(); convert_hf_to_gguf(hf_dir, out, vocab_from=gguf)   # HF -> f16 GGUF
    quantize_gguf(f16, out, "Q4_0")           # llama.cpp's quantizer, through llama-cpp-python

The header parser walks the file's own layout (magic, counts, key/values, tensor infos) with the
gguf package's type tables. It reads no tensor data, so checking a file costs ~0.1-0.3 s; the gguf
package's GGUFReader builds an object per vocabulary entry and takes many seconds on Gemma's 262k tokens.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from .errors import CourseError
from .loading import MissingBackendError, ModelNotFoundError, NotAModelError, new_llama


class NotGGUFError(NotAModelError):
    """The file is not a GGUF file, or its header is damaged."""


class TruncatedGGUFError(NotAModelError):
    """The file is shorter than its own header says: a cut-off download or copy."""


class ContextOverflowError(CourseError):
    """A prompt does not fit the context window (n_ctx) the model was created with."""


class ConverterNotFoundError(MissingBackendError):
    """llama.cpp's HF-to-GGUF converter is not on this machine."""


class ContextTruncationWarning(UserWarning):
    """Prompt + max_tokens exceed n_ctx: llama-cpp-python will cut the answer short."""


# ---- reading the header ----------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
SMALL_ARRAY = 16  # arrays up to this length are kept in the metadata; longer ones are summarised


@dataclass
class ArraySummary:
    """A long metadata array (e.g. the 262,144 vocabulary entries), kept as type and length."""

    item_type: str
    length: int

    def __repr__(self) -> str:
        return f"<array of {self.length:,} {self.item_type}>"


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    type_name: str  # "Q4_K", "F32", ...
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """Everything before the tensor data: metadata, tensor infos, and where the data must end."""

    path: Path
    version: int
    metadata: dict
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int  # where the tensor data section starts
    data_end: int  # where the last tensor ends: the file must be at least this long
    file_size: int
    arrays: dict = field(default_factory=dict)  # long arrays, read in full only when asked for
    header_bytes: int = 0  # where the header (metadata + tensor infos) ends

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


class _Cursor:
    """Bounds-checked little-endian reads over a memory-mapped file."""

    def __init__(self, buf, path: Path, size: int):
        self.buf, self.path, self.size, self.pos = buf, path, size, 0
        self.what = "the header"

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise TruncatedGGUFError(
                f"{self.path} is truncated or damaged: its header runs past the end of the file "
                f"(reading {self.what} at byte {start:,}, the file has {self.size:,} bytes). "
                "The download or copy was cut short: download the file again (notebook 01).")
        self.pos = start + n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def raw_string(self) -> bytes:
        n = self.scalar("<Q")
        start = self.take(n)
        return bytes(self.buf[start:start + n])

    def string(self) -> str:
        raw = self.raw_string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _damaged(self.path, f"{self.what} is not valid UTF-8 text") from None

    def skip_string(self) -> None:
        self.take(self.scalar("<Q"))


def _damaged(path: Path, why: str) -> NotGGUFError:
    return NotGGUFError(f"{path} has a GGUF signature but a damaged header ({why}). "
                        "Download the file again (notebook 01), or re-export it.")


def _value_type_name(code: int) -> str:
    from gguf import GGUFValueType

    return GGUFValueType(code).name


def _read_value(cur: _Cursor, vtype: int, keep_arrays: bool, depth: int = 0):
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype != _ARRAY or depth > 2:
        raise _damaged(cur.path, f"unknown value type {vtype} in {cur.what}")
    item_type = cur.scalar("<I")
    length = cur.scalar("<Q")
    if item_type in _SCALARS:
        fmt = _SCALARS[item_type]
        size = struct.calcsize(fmt)
        start = cur.take(size * length)  # raises before a huge bogus length allocates anything
        if length <= SMALL_ARRAY or keep_arrays:
            import numpy as np

            values = np.frombuffer(bytes(cur.buf[start:start + size * length]), dtype=fmt)
            return values.tolist() if length <= SMALL_ARRAY else values
        return ArraySummary(_value_type_name(item_type), length)
    if item_type == _STRING:
        if length <= SMALL_ARRAY or keep_arrays:
            return [cur.raw_string().decode("utf-8", errors="replace") for _ in range(length)]
        for _ in range(length):
            cur.skip_string()
        return ArraySummary("STRING", length)
    if item_type == _ARRAY:
        return [_read_value(cur, _ARRAY, keep_arrays, depth + 1) for _ in range(length)]
    raise _damaged(cur.path, f"unknown array item type {item_type} in {cur.what}")


def _describe_start(head: bytes) -> str:
    """A guess at what a non-GGUF file is, from its first bytes."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML/XML page (a login or error page saved instead of the model?)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer (the repository was cloned without `git lfs pull`)"
    if head.startswith(b"PK"):
        return "a zip archive (a PyTorch .bin/.pt checkpoint?)"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file (a Transformers checkpoint, not llama.cpp's format)"
    if text.startswith((b"{", b"[")):
        return "a JSON file"
    return "something else"


def read_gguf(path, keep_arrays: bool = False) -> GGUFHeader:
    """Parse a GGUF header without reading tensor data; raise a clear CourseError if it cannot.

    keep_arrays=True also returns the long arrays (vocabulary, scores, token types) in `arrays`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Build the course models with `python -m helpers.course_models build`, "
            "download a GGUF file (notebook 01), or check the spelling of the path.")
    if not path.is_file():
        raise NotAModelError(f"{path} is a folder; pass the .gguf file inside it.")
    size = path.stat().st_size
    if size == 0:
        raise NotGGUFError(f"{path} is empty (0 bytes): the download or copy failed. Download it again (notebook 01).")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse_header(buf, size, path, keep_arrays)


def parse_gguf_bytes(data: bytes, keep_arrays: bool = False, label: str = "the GGUF data") -> GGUFHeader:
    """The same as read_gguf for the first bytes of a file held in memory (e.g. fetched with an HTTP
    Range request). Raises TruncatedGGUFError when `data` ends before the tensor table does."""
    return _parse_header(data, len(data), Path(label), keep_arrays)


def _parse_header(buf, size: int, path: Path, keep_arrays: bool) -> GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    head = bytes(buf[:64])
    if len(head) < 4 and b"GGUF".startswith(head):
        raise TruncatedGGUFError(f"{path} is truncated: it has only {size} bytes. Download it again (notebook 01).")
    if head[:4] != b"GGUF":
        raise NotGGUFError(
            f"{path} is not a GGUF file: it starts with {head[:4]!r}, a GGUF file starts with b'GGUF'. "
            f"It looks like {_describe_start(head)}. Download the .gguf file again (notebook 01) "
            "or pick the right file.")
    cur = _Cursor(buf, path, size)
    cur.take(4)
    version = cur.scalar("<I")
    if version not in (2, 3):
        hint = " (version 1 is from 2023; re-download a current file)" if version == 1 else ""
        raise NotGGUFError(f"{path}: GGUF version {version} is not one llama.cpp reads (2 or 3){hint}.")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    meta: dict = {}
    arrays: dict = {}
    for index in range(n_kv):
        cur.what = f"metadata entry {index + 1} of {n_kv:,}"
        key = cur.string()
        cur.what = f"the value of {key!r}"
        value = _read_value(cur, cur.scalar("<I"), keep_arrays)
        if keep_arrays and not isinstance(value, ArraySummary) and hasattr(value, "__len__") \
                and not isinstance(value, str) and len(value) > SMALL_ARRAY:
            arrays[key] = value
            value = ArraySummary(type(value).__name__, len(value))
        meta[key] = value
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _damaged(path, f"general.alignment is {alignment!r}, not a power of two")
    tensors = []
    for index in range(n_tensors):
        cur.what = f"tensor info {index + 1} of {n_tensors:,}"
        name = cur.string()
        n_dims = cur.scalar("<I")
        if n_dims > 8:
            raise _damaged(path, f"tensor {name!r} claims {n_dims} dimensions")
        shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
        type_code = cur.scalar("<I")
        offset = cur.scalar("<Q")
        try:
            qtype = GGMLQuantizationType(type_code)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _damaged(path, f"tensor {name!r} has unknown type {type_code}") from None
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        if shape and shape[0] % block:
            raise _damaged(path, f"tensor {name!r} ({qtype.name}) has a row of {shape[0]}, "
                                 f"not a multiple of its block size {block}")
        tensors.append(TensorInfo(name, shape, qtype.name, offset, n_elements, n_elements // block * type_size))
    data_offset = -(-cur.pos // alignment) * alignment
    data_end = data_offset + max(t.offset + t.n_bytes for t in tensors) if tensors else cur.pos
    return GGUFHeader(path, version, meta, tensors, alignment, data_offset, data_end, size, arrays,
                      header_bytes=cur.pos)


def validate_gguf(path) -> GGUFHeader:
    """Check that `path` is a whole GGUF file: right magic and version, readable header, and
    every tensor's bytes present (the data section ends where the header says it must)."""
    header = read_gguf(path)
    if header.file_size < header.data_end:
        missing = header.data_end - header.file_size
        raise TruncatedGGUFError(
            f"{header.path} is truncated: its header describes {len(header.tensors)} tensors whose data "
            f"ends at byte {header.data_end:,}, but the file has only {header.file_size:,} bytes "
            f"({missing:,} bytes, {missing / header.data_end:.1%}, are missing). The download or copy was "
            "cut short: download the file again (notebook 01); llama.cpp would fail on it with only "
            "'Failed to load model from file'.")
    return header


# ---- what the header says ---------------------------------------------------------------------

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


def summary(header: GGUFHeader) -> dict:
    """The facts a user asks first: architecture, size, context, layers, file type, chat template."""
    meta = header.metadata
    arch = meta.get("general.architecture", "?")
    tokens = meta.get("tokenizer.ggml.tokens")
    template = meta.get("tokenizer.chat_template")
    params = sum(t.n_elements for t in header.tensors)
    return {
        "file": header.path.name,
        "size_MB": round(header.file_size / 1e6, 1),
        "GGUF version": header.version,
        "architecture": arch,
        "name": meta.get("general.name"),
        "parameters": params,
        "file type": FILE_TYPES.get(meta.get("general.file_type"), meta.get("general.file_type")),
        "bits per weight": round(8 * (header.data_end - header.data_offset) / max(params, 1), 2),
        "tensor count": len(header.tensors),
        "metadata entries": len(meta),
        "layers (block_count)": meta.get(f"{arch}.block_count"),
        "context length": meta.get(f"{arch}.context_length"),
        "embedding length": meta.get(f"{arch}.embedding_length"),
        "sliding window": meta.get(f"{arch}.attention.sliding_window"),
        "tokenizer": meta.get("tokenizer.ggml.model"),
        "pre-tokenizer": meta.get("tokenizer.ggml.pre"),
        "vocabulary size": tokens.length if isinstance(tokens, ArraySummary) else len(tokens or []),
        "chat template": "yes" if template else "none (base model)",
    }


def tensor_group(name: str) -> str:
    """'blk.7.attn_q.weight' -> 'attn_q'; 'token_embd.weight' -> 'token_embd'."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2:
        return parts[2]
    return parts[0]


def quant_type_rows(header: GGUFHeader) -> list[dict]:
    """One row per tensor group: how many tensors of each type, parameters, bytes, bits per weight."""
    groups: dict[str, dict] = {}
    for t in header.tensors:
        row = groups.setdefault(tensor_group(t.name), {"group": tensor_group(t.name), "types": {},
                                                       "tensors": 0, "parameters": 0, "bytes": 0})
        row["types"][t.type_name] = row["types"].get(t.type_name, 0) + 1
        row["tensors"] += 1
        row["parameters"] += t.n_elements
        row["bytes"] += t.n_bytes
    rows = []
    for row in sorted(groups.values(), key=lambda r: -r["bytes"]):
        types = ", ".join(f"{name} x{n}" for name, n in sorted(row["types"].items(), key=lambda kv: -kv[1]))
        rows.append({"group": row["group"], "types": types, "tensors": row["tensors"],
                     "parameters": row["parameters"], "MB": round(row["bytes"] / 1e6, 2),
                     "bits/weight": round(8 * row["bytes"] / row["parameters"], 2)})
    return rows


def bytes_by_type(header: GGUFHeader) -> dict[str, int]:
    """Bytes of tensor data per quantization type."""
    out: dict[str, int] = {}
    for t in header.tensors:
        out[t.type_name] = out.get(t.type_name, 0) + t.n_bytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---- the context window --------------------------------------------------------------------

def check_context(llm, prompt: str, max_tokens: int) -> dict:
    """Will `prompt` plus `max_tokens` of output fit the Llama's n_ctx? Raise if the prompt cannot.

    llama-cpp-python itself raises a bare ValueError when the prompt alone fills n_ctx, and
    silently shortens max_tokens (finish_reason "length") when prompt + output do not fit.
    """
    n_ctx = effective_n_ctx(llm)
    prompt_tokens = len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
    fits = prompt_tokens + max_tokens <= n_ctx
    report = {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "n_ctx": n_ctx,
              "output_room": max(n_ctx - prompt_tokens, 0), "fits": fits,
              "suggested_n_ctx": suggest_n_ctx(prompt_tokens, max_tokens)}
    if prompt_tokens >= n_ctx:
        raise ContextOverflowError(
            f"The prompt is {prompt_tokens:,} tokens but the model was created with n_ctx={n_ctx:,}, so "
            "nothing is left for the answer (llama-cpp-python would raise 'Requested tokens exceed context "
            f"window'). Load it with n_ctx >= {report['suggested_n_ctx']:,} (load_model(path, n_ctx=...) or "
            f"Llama(..., n_ctx=...); prompt + "
            f"{max_tokens} new tokens), or shorten the prompt." + _rounding_note(llm, n_ctx))
    if not fits:
        warnings.warn(
            f"prompt ({prompt_tokens:,} tokens) + max_tokens ({max_tokens:,}) exceed n_ctx={n_ctx:,}: the answer "
            f"will stop after {report['output_room']:,} tokens with finish_reason='length'. Load the model "
            f"with n_ctx >= {report['suggested_n_ctx']:,} to get all of it.", ContextTruncationWarning, stacklevel=2)
    return report


def _rounding_note(llm, n_ctx: int) -> str:
    if llm.n_ctx() == n_ctx:
        return ""
    return (f" (llm.n_ctx() says {llm.n_ctx()}: llama.cpp rounds up to a multiple of 256, but llama-cpp-python "
            f"keeps buffers for the {n_ctx} you asked for, and fails with 'could not broadcast' in between: "
            "ask for a multiple of 256.)")


def effective_n_ctx(llm) -> int:
    """The context the Llama can really use.

    llama.cpp rounds n_ctx up to a multiple of 256 and reports that from n_ctx(), but
    llama-cpp-python 0.3.36 sizes its own token buffer with the n_ctx you asked for; a prompt
    between the two fails with a numpy "could not broadcast" error. Ask for multiples of 256.
    """
    buffer = getattr(llm, "input_ids", None)
    return min(llm.n_ctx(), len(buffer)) if buffer is not None else llm.n_ctx()


def suggest_n_ctx(prompt_tokens: int, max_tokens: int, trained_context: int | None = None,
                  multiple: int = 256) -> int:
    """Smallest n_ctx (rounded up to `multiple`) that holds prompt + output; never above the trained length."""
    need = -(-(prompt_tokens + max_tokens) // multiple) * multiple
    if trained_context and need > trained_context:
        raise ContextOverflowError(
            f"prompt ({prompt_tokens:,}) + output ({max_tokens:,}) tokens exceed the model's trained context "
            f"of {trained_context:,} tokens. Shorten the prompt or summarise earlier turns.")
    return need


# ---- obtaining llama.cpp's converter (it is not in the wheel) ---------------------------------

CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def llama_cpp_version() -> str:
    try:
        return importlib_metadata.version("llama-cpp-python")
    except importlib_metadata.PackageNotFoundError:
        raise MissingBackendError("llama-cpp-python is not installed; run `make setup`.") from None


def converter_dir() -> Path:
    """Where the course keeps the converter extracted from llama-cpp-python's sdist."""
    from .course_models import cache_dir

    return cache_dir() / "tools" / f"llama.cpp-{llama_cpp_version()}"


def converter_download_command(dest: str = ".") -> str:
    return f"pip download --no-deps --no-binary :all: llama-cpp-python=={llama_cpp_version()} -d {dest}"


def _pip_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("PIP_CACHE_DIR"):
        dirs.append(Path(os.environ["PIP_CACHE_DIR"]))
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
                             timeout=60)
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
            rel = member.name[len(prefix):] if member.name.startswith(prefix) else None
            if rel and (member.isfile() or member.isdir()) and any(
                    rel == m or (m.endswith("/") and rel.startswith(m)) for m in CONVERTER_MEMBERS):
                member.name = rel
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise ConverterNotFoundError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py.")
        partial.mkdir(parents=True)
        tar.extractall(partial, members=members, filter="data")
    (partial / "SOURCE.txt").write_text(f"extracted from {sdist.name} (llama-cpp-python {llama_cpp_version()})\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target / "convert_hf_to_gguf.py"


def download_sdist(dest: Path) -> Path:
    """pip download the sdist (needs the internet: 76 MB from PyPI)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           f"llama-cpp-python=={llama_cpp_version()}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / f"llama_cpp_python-{llama_cpp_version()}.tar.gz"
    if proc.returncode != 0 or not sdist.exists():
        raise ConverterNotFoundError(
            f"Downloading llama-cpp-python's source from PyPI failed:\n{proc.stderr.strip()[-800:]}\n"
            f"Without the internet, copy the sdist here and set QLLM_LLAMA_CPP_SDIST=/path/to/it.")
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
            "`python -m helpers.gguf_tools converter --download` once: it runs "
            f"`{converter_download_command('<tmp>')}` (76 MB from PyPI) and keeps only the converter. "
            "Or clone https://github.com/ggml-org/llama.cpp and pass its convert_hf_to_gguf.py as `converter=`.")
    script = extract_converter(sdist)
    if sdist.parent == converter_dir().parent / "sdist":
        shutil.rmtree(sdist.parent, ignore_errors=True)  # 76 MB we no longer need
    return script


# ---- making GGUF files ------------------------------------------------------------------------

def write_sentencepiece_files(gguf_path, folder) -> list[Path]:
    """Rebuild tokenizer.model (+ added_tokens.json) in `folder` from a GGUF's SentencePiece vocabulary.

    The course's HF folder was made from the GGUF and has only tokenizer.json; without a
    tokenizer.model llama.cpp's converter switches to a GPT-2 style BPE vocabulary and picks a
    pre-tokenizer by a hash. The converter reads token types through SentencePiece, which has no
    "user defined" test, so those tokens (Gemma's runs of newlines and spaces) go in added_tokens.json.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        raise MissingBackendError("Writing tokenizer.model needs sentencepiece and protobuf: "
                                  "`pip install sentencepiece protobuf`.") from None
    header = read_gguf(gguf_path, keep_arrays=True)
    meta = header.metadata
    if meta.get("tokenizer.ggml.model") != "llama":
        raise CourseError(f"{gguf_path} has a {meta.get('tokenizer.ggml.model')!r} vocabulary, not a "
                          "SentencePiece ('llama') one; copy its tokenizer files instead.")
    tokens = header.arrays["tokenizer.ggml.tokens"]
    scores = header.arrays["tokenizer.ggml.scores"].tolist()
    types = header.arrays["tokenizer.ggml.token_type"].tolist()
    model = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind  # GGUF token types use SentencePiece's numbers
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
    added = {piece: i for i, (piece, kind) in enumerate(zip(tokens, types)) if kind == USER_DEFINED}
    added_path = folder / "added_tokens.json"
    added_path.write_text(json.dumps(added, ensure_ascii=False))
    return [model_path, added_path]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:  # e.g. Windows without developer mode
        shutil.copy2(src, dst)


def convert_hf_to_gguf(hf_dir, out_path, outtype: str = "f16", vocab_from=None, vocab_only: bool = False,
                       model_name: str | None = None, converter: Path | None = None) -> dict:
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
        for item in hf_dir.iterdir():  # the converter reads the folder; we only add files to a view of it
            if item.is_file() and not (vocab_from and item.name in ("tokenizer.model", "added_tokens.json")):
                _link_or_copy(item.resolve(), staging / item.name)
        if vocab_from is not None:
            write_sentencepiece_files(vocab_from, staging)
            model_name = model_name or read_gguf(vocab_from).metadata.get("general.name")
        cmd = [sys.executable, str(converter), str(staging), "--outtype", outtype, "--outfile", str(partial),
               "--model-name", model_name or hf_dir.name]
        if vocab_only:
            cmd.append("--vocab-only")
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use its own gguf-py
        started = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not partial.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise CourseError(f"convert_hf_to_gguf.py failed (exit code {proc.returncode}); nothing was written. "
                              f"Full log: {log_path}\n--- last lines ---\n{tail}")
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": out_path, "seconds": seconds, "log": log_path}


QUANT_FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_M": 12,
                "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def quantize_gguf(src, out_path, qtype: str, n_threads: int | None = None) -> dict:
    """Quantize a (f16/bf16/f32) GGUF to `qtype` with llama.cpp's own quantizer; write atomically."""
    import llama_cpp

    if qtype not in QUANT_FTYPES:
        raise CourseError(f"Unknown quantization type {qtype!r}; choose one of {', '.join(QUANT_FTYPES)}.")
    validate_gguf(src)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = n_threads or int(os.environ.get("QLLM_THREADS") or os.cpu_count() or 1)
    started = time.perf_counter()
    try:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
        if status != 0 or not partial.exists():
            raise CourseError(f"llama.cpp could not quantize {src} to {qtype} (status {status}). Is the source "
                              "an unquantized (F16/BF16/F32) GGUF? Requantizing a quantized file is refused.")
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return {"path": out_path, "seconds": time.perf_counter() - started}


def gguf_token_ids(path, text: str) -> list[int]:
    """How llama.cpp tokenizes `text` with this GGUF's vocabulary (loads the vocabulary only)."""
    vocab = new_llama(path, vocab_only=True)
    try:
        return vocab.tokenize(text.encode("utf-8"), add_bos=True)
    finally:
        vocab.close()


# ---- measuring, one configuration per process --------------------------------------------------

def _proc_status_mib(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (VmHWM on Linux; see timing.peak_rss_bytes)."""
    from .timing import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def _decode_timing(run, n_tokens: int, repeats: int = 3) -> dict:
    """Time to first token and decode speed, best of `repeats` (other programs only ever slow a run down)."""
    run(4)  # warm-up: first-call allocations, caches
    first = min(run(1) for _ in range(repeats))
    full = min(run(n_tokens) for _ in range(repeats))
    return {"first_token_s": first, "decode_tok_s": (n_tokens - 1) / max(full - first, 1e-9)}


def bench_llama_cpp(path: str, prompt_ids: list[int], n_tokens: int, threads: int) -> dict:
    started = time.perf_counter()
    llm = new_llama(path, n_ctx=512, n_threads=threads, n_threads_batch=threads)
    load = time.perf_counter() - started

    def run(n):  # greedy, never stopping at end-of-text, so every run makes n tokens
        llm.reset()
        t0 = time.perf_counter()
        for i, _ in enumerate(llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True)):
            if i + 1 == n:
                break
        return time.perf_counter() - t0

    return {"load_s": load, **_decode_timing(run, n_tokens),
            "weights_MiB": Path(path).stat().st_size / 2**20, "linear weights": "GGUF blocks (mmap)"}


def bench_transformers(path: str, prompt_ids: list[int], n_tokens: int, threads: int, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    started = time.perf_counter()
    file = Path(path)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=getattr(torch, dtype))
    load = time.perf_counter() - started
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ids = torch.tensor([prompt_ids])

    def run(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    classes = sorted({type(m).__name__ for m in linear})
    dtypes = sorted({str(m.weight.dtype).replace("torch.", "") for m in linear})
    return {"load_s": load, **_decode_timing(run, n_tokens),
            "weights_MiB": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "linear weights": f"{len(linear)} x {'/'.join(classes)} in {'/'.join(dtypes)}"}


def bench_in_subprocess(backend: str, path, prompt_ids: list[int], n_tokens: int = 32,
                        dtype: str = "float32", threads: int | None = None, timeout: int = 900) -> dict:
    """Load + decode speed + peak RSS of one configuration in a fresh Python process (peaks don't mix)."""
    threads = threads or int(os.environ.get("QLLM_THREADS") or os.cpu_count() or 1)
    job = json.dumps({"backend": backend, "path": str(path), "prompt_ids": prompt_ids, "n_tokens": n_tokens,
                      "dtype": dtype, "threads": threads})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "helpers.gguf_tools", "_bench", job], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise CourseError(f"The {backend} benchmark process failed (exit code {proc.returncode}):\n"
                          + "\n".join(proc.stderr.strip().splitlines()[-12:]))
    result = json.loads(lines[-1][6:])
    result["messages"] = [line for line in proc.stderr.splitlines()
                          if "[transformers]" in line or "warn" in line.lower()][:5]
    return result


def _bench_main(job_json: str) -> None:
    job = json.loads(job_json)
    rss_start = _proc_status_mib("VmRSS") or peak_rss_mib()
    if job["backend"] == "llama.cpp":
        result = bench_llama_cpp(job["path"], job["prompt_ids"], job["n_tokens"], job["threads"])
    else:
        result = bench_transformers(job["path"], job["prompt_ids"], job["n_tokens"], job["threads"], job["dtype"])
    result.update(peak_rss_MiB=peak_rss_mib(), rss_before_loading_MiB=rss_start)
    print("BENCH " + json.dumps(result), flush=True)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.gguf_tools", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("converter", help="make llama.cpp's convert_hf_to_gguf.py available (offline if pip cached the sdist)")
    conv.add_argument("--download", action="store_true", help="fetch the sdist from PyPI if it is not cached")
    check = sub.add_parser("check", help="validate a GGUF file and print its summary")
    check.add_argument("path")
    bench = sub.add_parser("_bench")  # internal: one benchmark configuration
    bench.add_argument("job")
    args = parser.parse_args(argv)
    try:
        if args.command == "converter":
            print(find_converter(download=args.download))
        elif args.command == "check":
            for key, value in summary(validate_gguf(args.path)).items():
                print(f"{key:22} {value}")
        else:
            _bench_main(args.job)
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
