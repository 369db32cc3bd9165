"""GGUF files: what is inside, and whether they are whole.

    header = validate_gguf(path)  # clear CourseError if missing, not GGUF, or truncated
    summary(header)               # architecture, context, layers, chat template, file type
    quant_type_rows(header)       # which quantization type each tensor group uses

Making GGUF files (llama.cpp's converter and quantizer): `helpers.gguf_convert`.

Our own header parser, with the gguf package's type tables: it skips tensor data and the vocabulary
(~0.15 s per file; gguf.GGUFReader builds an object per vocabulary entry, ~100x slower on Gemma's
262k).
"""

from __future__ import annotations

import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError, NotAModelError, NotGGUFError, TruncatedGGUFError

SMALL_ARRAY = 16  # arrays up to this length are kept in the metadata; longer ones are summarised


@dataclass
class ArraySummary:
    """A long metadata array (e.g. the 262,144 vocabulary entries), kept as type and length."""

    item_type: str
    length: int
    values: object = None  # the array itself, only with read_gguf(keep_arrays=True)

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
        self.buf, self.path, self.size, self.pos, self.what = buf, path, size, 0, "the header"

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise TruncatedGGUFError(
                f"{self.path} is truncated or damaged: its header runs past the end of the file "
                f"(reading {self.what} at byte {start:,}, the file has {self.size:,} bytes). "
                "The download or copy was cut short: download the file again (notebook 01)."
            )
        self.pos = start + n
        return start

    def scalar(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self, errors: str = "strict") -> str:
        start = self.take(self.scalar("<Q"))
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8", errors)
        except UnicodeDecodeError:
            raise _damaged(self.path, f"{self.what} is not valid UTF-8 text") from None

    def enum(self, kind, code: int, what: str):
        """kind(code) from the gguf package's tables, or a clear error for a code they do not
        know."""
        try:
            return kind(code)
        except ValueError:
            raise _damaged(self.path, f"unknown {what} {code} in {self.what}") from None


def _damaged(path: Path, why: str) -> NotGGUFError:
    return NotGGUFError(
        f"{path} has a GGUF signature but a damaged header ({why}). "
        "Download the file again (notebook 01), or re-export it."
    )


def _read_value(cur: _Cursor, code: int, keep_arrays: bool, depth: int = 0):
    """One metadata value; an array longer than SMALL_ARRAY is an ArraySummary (its values only if
    kept)."""
    from gguf import GGUFValueType

    vtype = cur.enum(GGUFValueType, code, "value type")
    if vtype != GGUFValueType.ARRAY:
        return (
            cur.string() if vtype == GGUFValueType.STRING else _items(cur, vtype, 1, read=True)[0]
        )
    if depth > 2:
        raise _damaged(cur.path, f"arrays nested too deep in {cur.what}")
    item, length = cur.enum(GGUFValueType, cur.scalar("<I"), "array item type"), cur.scalar("<Q")
    if item == GGUFValueType.ARRAY:
        return [_read_value(cur, item, keep_arrays, depth + 1) for _ in range(length)]
    values = _items(cur, item, length, read=length <= SMALL_ARRAY or keep_arrays)
    return values if length <= SMALL_ARRAY else ArraySummary(item.name, length, values)


def _items(cur: _Cursor, vtype, n: int, read: bool):
    """n values of one type: a list (n <= SMALL_ARRAY), a numpy array, or None when not `read`."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    if vtype == GGUFValueType.STRING:
        if read:
            return [cur.string(errors="replace") for _ in range(n)]
        for _ in range(n):  # skipped, not decoded: what makes a 262k-token vocabulary quick to pass
            cur.take(cur.scalar("<Q"))
        return None
    dtype = np.dtype(GGUFReader.gguf_scalar_to_np[vtype]).newbyteorder("<")
    start = cur.take(dtype.itemsize * n)  # raises before a huge bogus length allocates anything
    values = np.frombuffer(cur.buf[start : cur.pos], dtype) if read else None
    return values.tolist() if read and n <= SMALL_ARRAY else values


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
    keep_arrays=True also returns the long arrays (vocabulary, scores, token types) in `arrays`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Build the course models with `python -m course.models build`, "
            "download a GGUF file (notebook 01), or check the spelling of the path."
        )
    if not path.is_file():
        raise NotAModelError(f"{path} is a folder; pass the .gguf file inside it.")
    size = path.stat().st_size
    if size == 0:
        raise NotGGUFError(
            f"{path} is empty (0 bytes): the download or copy failed. "
            "Download it again (notebook 01)."
        )
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse_header(buf, size, path, keep_arrays)


def parse_gguf_bytes(
    data: bytes, keep_arrays: bool = False, label: str = "the GGUF data"
) -> GGUFHeader:
    """read_gguf for the first bytes of a file held in memory (e.g. from an HTTP Range request).
    Raises TruncatedGGUFError when `data` ends before the tensor table does."""
    return _parse_header(data, len(data), Path(label), keep_arrays)


def _parse_header(buf, size: int, path: Path, keep_arrays: bool) -> GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    head = bytes(buf[:64])
    if len(head) < 4 and b"GGUF".startswith(head):
        raise TruncatedGGUFError(
            f"{path} is truncated: it has only {size} bytes. Download it again (notebook 01)."
        )
    if head[:4] != b"GGUF":
        raise NotGGUFError(
            f"{path} is not a GGUF file: it starts with {head[:4]!r}, "
            "a GGUF file starts with b'GGUF'. "
            f"It looks like {_describe_start(head)}. Download the .gguf file again (notebook 01) "
            "or pick the right file."
        )
    cur = _Cursor(buf, path, size)
    cur.take(4)
    version = cur.scalar("<I")
    if version not in (2, 3):
        hint = " (version 1 is from 2023; re-download a current file)" if version == 1 else ""
        raise NotGGUFError(
            f"{path}: GGUF version {version} is not one llama.cpp reads (2 or 3){hint}."
        )
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    meta: dict = {}
    for index in range(n_kv):
        cur.what = f"metadata entry {index + 1} of {n_kv:,}"
        key = cur.string()
        cur.what = f"the value of {key!r}"
        meta[key] = _read_value(cur, cur.scalar("<I"), keep_arrays)
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
        qtype = cur.enum(GGMLQuantizationType, cur.scalar("<I"), "tensor type")
        offset = cur.scalar("<Q")
        # the gguf package has a size for each of its types
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = math.prod(shape)
        if shape and shape[0] % block:
            raise _damaged(
                path,
                f"tensor {name!r} ({qtype.name}) has a row of {shape[0]}, "
                f"not a multiple of its block size {block}",
            )
        tensors.append(
            TensorInfo(name, shape, qtype.name, offset, n_elements, n_elements // block * type_size)
        )
    data_offset = -(-cur.pos // alignment) * alignment
    data_end = data_offset + max(t.offset + t.n_bytes for t in tensors) if tensors else cur.pos
    arrays = {
        k: v.values for k, v in meta.items() if isinstance(v, ArraySummary) and v.values is not None
    }
    return GGUFHeader(
        path, version, meta, tensors, alignment, data_offset, data_end, size, arrays, cur.pos
    )


def validate_gguf(path) -> GGUFHeader:
    """Check that `path` is a whole GGUF file: right magic and version, readable header, and
    every tensor's bytes present (the data section ends where the header says it must)."""
    header = read_gguf(path)
    if header.file_size < header.data_end:
        missing = header.data_end - header.file_size
        raise TruncatedGGUFError(
            f"{header.path} is truncated: its header describes {len(header.tensors)} tensors "
            f"whose data ends at byte {header.data_end:,}, but the file has only "
            f"{header.file_size:,} bytes ({missing:,} bytes, {missing / header.data_end:.1%}, are "
            "missing). The download or copy was cut short: download the file again (notebook 01); "
            "llama.cpp would fail on it with only 'Failed to load model from file'."
        )
    return header


# ---- what the header says ---------------------------------------------------------------------


def file_type_name(code) -> str | None:
    """general.file_type as llama.cpp names it ("Q4_K_M", "F16", ...), from gguf.LlamaFileType."""
    from gguf import LlamaFileType

    if code is None:
        return None
    try:
        return LlamaFileType(int(code)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"file_type {code} (unknown to gguf-py)"


def summary(header: GGUFHeader) -> dict:
    """The facts a user asks first: architecture, size, context, layers, file type, chat
    template."""
    meta = header.metadata
    arch = meta.get("general.architecture", "?")
    tokens = meta.get("tokenizer.ggml.tokens")
    return {
        "file": header.path.name,
        "size_MB": round(header.file_size / 1e6, 1),
        "GGUF version": header.version,
        "architecture": arch,
        "name": meta.get("general.name"),
        "parameters": header.n_params,
        "file type": file_type_name(meta.get("general.file_type")),
        "bits per weight": round(
            8 * (header.data_end - header.data_offset) / max(header.n_params, 1), 2
        ),
        "tensor count": len(header.tensors),
        "metadata entries": len(meta),
        "layers (block_count)": meta.get(f"{arch}.block_count"),
        "context length": meta.get(f"{arch}.context_length"),
        "embedding length": meta.get(f"{arch}.embedding_length"),
        "sliding window": meta.get(f"{arch}.attention.sliding_window"),
        "tokenizer": meta.get("tokenizer.ggml.model"),
        "pre-tokenizer": meta.get("tokenizer.ggml.pre"),
        "vocabulary size": tokens.length if isinstance(tokens, ArraySummary) else len(tokens or []),
        "chat template": "yes" if meta.get("tokenizer.chat_template") else "none (base model)",
    }


def tensor_group(name: str) -> str:
    """'blk.7.attn_q.weight' -> 'attn_q'; 'token_embd.weight' -> 'token_embd'."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" and len(parts) > 2 else parts[0]


def quant_type_rows(header: GGUFHeader) -> list[dict]:
    """One row per tensor group: how many tensors of each type, parameters, bytes, bits per
    weight."""
    groups: dict[str, dict] = {}
    for t in header.tensors:
        row = groups.setdefault(
            tensor_group(t.name), {"types": Counter(), "parameters": 0, "bytes": 0}
        )
        row["types"][t.type_name] += 1
        row["parameters"] += t.n_elements
        row["bytes"] += t.n_bytes
    return [
        {
            "group": group,
            "types": ", ".join(f"{name} x{n}" for name, n in row["types"].most_common()),
            "tensors": row["types"].total(),
            "parameters": row["parameters"],
            "MB": round(row["bytes"] / 1e6, 2),
            "bits/weight": round(8 * row["bytes"] / row["parameters"], 2),
        }
        for group, row in sorted(groups.items(), key=lambda kv: -kv[1]["bytes"])
    ]


def bytes_by_type(header: GGUFHeader) -> dict[str, int]:
    """Bytes of tensor data per quantization type, largest first."""
    out: Counter = Counter()
    for t in header.tensors:
        out[t.type_name] += t.n_bytes
    return dict(out.most_common())
