"""GGUF files: what is inside, whether they are whole, and whether a prompt fits the context.

    header = validate_gguf(path)              # clear CourseError if missing, not GGUF, or truncated
    summary(header)                           # architecture, context, layers, chat template, file type
    quant_type_rows(header)                   # which quantization type each tensor group uses
    check_context(llm, prompt, max_tokens)    # refuse a prompt that cannot fit n_ctx, say how to size it

Making GGUF files (llama.cpp's converter and quantizer) is course machinery: `course.gguf_convert`.

The header parser walks the file's own layout (magic, counts, key/values, tensor infos) with the
gguf package's type tables and names. It reads no tensor data, so checking a file costs ~0.1-0.3 s;
the gguf package's GGUFReader builds an object per vocabulary entry and takes many seconds on Gemma's
262k tokens (measured: about 100x slower on the course file).
"""

from __future__ import annotations

import mmap
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import (ContextOverflowError, ContextTruncationWarning, ModelNotFoundError, NotAModelError,  # noqa: F401
                     NotGGUFError, TruncatedGGUFError)


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
            f"{path} does not exist. Build the course models with `python -m course.models build`, "
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

def file_type_name(code) -> str | None:
    """general.file_type as llama.cpp names it ("Q4_K_M", "F16", ...), from gguf.LlamaFileType."""
    from gguf import LlamaFileType

    if code is None:
        return None
    try:
        name = LlamaFileType(int(code)).name
    except ValueError:
        return f"file_type {code} (unknown to gguf-py)"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


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
        "file type": file_type_name(meta.get("general.file_type")),
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
    return context_report(llm, len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)), max_tokens)


def context_report(llm, prompt_tokens: int, max_tokens: int) -> dict:
    """check_context for a prompt already counted in tokens (helpers.loading.fit_context uses it)."""
    n_ctx = effective_n_ctx(llm)
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
