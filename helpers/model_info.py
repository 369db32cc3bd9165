"""What a repo's model is before you download it: its parameters, its size at each precision, its
GGUF header.

    param_count(config)  # parameters from a config.json (a dict)
    # params -> fp32/bf16/8/4-bit vs the files
    model_size("neuralmagic/Mistral-7B-Instruct-v0.3-GPTQ-4bit")
    # the header over HTTP Range, not the file
    gguf_header_remote(repo, "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf")
    gguf_header("models/gemma-3-270m-Q4_K_M.gguf")  # the same for a local file
    model_shape("models/my-gptq")  # vocabulary, layers, hidden size: is it the same model?
    safetensors_tensors_remote(repo, "model.safetensors")  # name -> (dtype, shape), from the header

Only config.json or a header travels (kept in memory, never saved); `helpers.gguf_tools` parses
GGUF headers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from . import downloading, hub
from .errors import DownloadFailedError, NoMatchingFilesError, TruncatedGGUFError
from .gguf_tools import parse_gguf_bytes, read_gguf

BYTES_PER_PARAM = {"fp32": 4.0, "bf16 / fp16": 2.0, "8-bit": 1.0, "4-bit": 0.5}


def param_count(config: dict) -> int:
    """Parameters of a Llama-style decoder (Llama, Mistral, Qwen2/3, Gemma 1-3) from its
    config.json.

    Embedding + per layer (attention q/k/v/o, gated MLP, norms) + final norm + output head (unless
    tied to the embedding); MoE configs count every expert. Not get_safetensors_metadata: that
    counts GPTQ/AWQ's packed int32 words (181 M instead of 268 M for the course model).
    """
    cfg = config.get("text_config") or config
    hidden, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    kind = str(cfg.get("model_type", ""))
    attention = (
        hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    )
    if cfg.get("attention_bias"):
        attention += heads * head_dim + 2 * kv_heads * head_dim + hidden
    elif kind.startswith("qwen2"):  # Qwen2 has q/k/v biases without saying so in its config
        attention += heads * head_dim + 2 * kv_heads * head_dim
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 1
    inter = (
        cfg.get("moe_intermediate_size")
        if experts > 1 and cfg.get("moe_intermediate_size")
        else cfg["intermediate_size"]
    )
    mlp = 3 * hidden * inter * experts + (hidden * experts if experts > 1 else 0)
    norms = (4 if kind.startswith(("gemma2", "gemma3")) else 2) * hidden
    if kind.startswith(("gemma3", "qwen3")):
        norms += 2 * head_dim  # q_norm and k_norm
    tied = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", True))
    return (
        vocab * hidden
        + layers * (attention + mlp + norms)
        + hidden
        + (0 if tied else vocab * hidden)
    )


@dataclass
class ModelSize:
    """A model's parameter count, what that weighs at each precision, and its actual weight
    files."""

    repo_id: str
    params: int
    source: str  # "config.json" or "GGUF header"
    weight_files: dict[str, int]

    @property
    def theory_bytes(self) -> dict[str, int]:
        return {name: int(self.params * b) for name, b in BYTES_PER_PARAM.items()}

    @property
    def files_bytes(self) -> int:
        return sum(self.weight_files.values())

    def __repr__(self) -> str:
        return (
            f"ModelSize({self.repo_id}: {self.params / 1e9:.3f} B params from {self.source}; bf16 "
            f"{2 * self.params / 1e9:.2f} GB, 4-bit {self.params / 2e9:.2f} GB, "
            f"files {self.files_bytes / 1e9:.2f} GB)"
        )


def model_size(repo_id: str, revision: str = "main", gguf_file: str | None = None) -> ModelSize:
    """Parameters from the repo's config.json (or from a GGUF file's header) next to the size of
    its weight files."""
    files = hub.list_files(repo_id, revision=revision)
    if "config.json" in {f.path for f in files} and not gguf_file:
        config = read_json(repo_id, "config.json", revision)
        weights = {f.path: f.size for f in files if f.path.endswith(".safetensors")} or {
            f.path: f.size for f in files if f.path.endswith(hub.PICKLE_SUFFIXES)
        }
        return ModelSize(repo_id, param_count(config), "config.json", weights)
    if any(f.path.endswith(".gguf") for f in files):
        chosen = downloading.choose_model_files(
            [f for f in files if f.path.endswith(".gguf")], gguf_file=gguf_file, repo_id=repo_id
        )[0]
        header = gguf_header_remote(repo_id, chosen.path, revision)
        return ModelSize(repo_id, header["params"], "GGUF header", {chosen.path: chosen.size})
    raise NoMatchingFilesError(
        f"{repo_id} has neither config.json nor a .gguf file: cannot size it."
    )


def _read(
    repo_id: str, filename: str, revision: str, start: int = 0, stop: int | None = None
) -> bytes:
    """Bytes start..stop of a repo file (an HTTP Range request), in memory; a server ignoring Range
    sends the rest."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers()
    if start or stop is not None:
        headers["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
    with hub.hub_errors(repo_id, revision, filename):
        answer = get_session().get(
            hf_hub_url(repo_id, filename, revision=revision, endpoint=hub.endpoint()),
            follow_redirects=True,
            headers=headers,
        )
        hf_raise_for_status(answer)
    return answer.content[start:] if answer.status_code == 200 else answer.content


def read_json(repo_id: str, filename: str, revision: str = "main") -> dict:
    """A small JSON file of a repo (config.json, an index), in memory."""
    return json.loads(_read(repo_id, filename, revision))


def _header_dict(header) -> dict:
    return {
        "version": header.version,
        "tensor_count": len(header.tensors),
        "params": header.n_params,
        "metadata": header.metadata,
        "shapes": {t.name: list(t.shape) for t in header.tensors},
        "tensor_bytes": {t.name: t.n_bytes for t in header.tensors},
        "types": {t.name: t.type_name for t in header.tensors},
        "header_bytes": header.header_bytes,
    }


def gguf_header_remote(
    repo_id: str,
    filename: str,
    revision: str = "main",
    first_bytes: int = 4 * 2**20,
    max_bytes: int = 128 * 2**20,
) -> dict:
    """A remote GGUF's header (version, tensor_count, params, metadata, shapes, tensor_bytes), over
    HTTP Range."""
    data, want = b"", first_bytes
    while True:
        # only the part not read yet
        data += _read(repo_id, filename, revision, start=len(data), stop=want)
        try:
            return _header_dict(parse_gguf_bytes(data, label=f"{repo_id}/{filename}"))
        except TruncatedGGUFError:  # the header goes on past what we fetched: fetch more
            if want >= max_bytes or len(data) < want:
                raise DownloadFailedError(
                    f"The GGUF header of {filename} is larger than {max_bytes} bytes "
                    "or the file is truncated."
                ) from None
            want *= 2


def gguf_header(path) -> dict:
    """The same for a local .gguf file."""
    return _header_dict(read_gguf(path))


def model_shape(path) -> dict:
    """What makes two checkpoints one model in two formats, from a .gguf file's header or a
    config.json (its text model's, for a multimodal one) in a local folder or a hub repo:
    vocabulary, layers, hidden size. (Architecture names differ across formats: a Mistral GGUF says
    "llama".)"""
    from pathlib import Path

    if not Path(path).exists():  # a hub repo id: its config.json only
        config = read_json(str(path), "config.json")
        return _config_shape(config.get("text_config") or config)
    path = Path(path)
    if path.suffix == ".gguf":
        header = gguf_header(path)
        metadata = header["metadata"]
        architecture = metadata.get("general.architecture", "")
        embedding = header["shapes"].get("token_embd.weight", [0, 0])
        return {
            "vocabulary": embedding[-1],
            "layers": metadata.get(f"{architecture}.block_count"),
            "hidden": metadata.get(f"{architecture}.embedding_length"),
        }
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return _config_shape(config.get("text_config") or config)


def _config_shape(config: dict) -> dict:
    return {
        "vocabulary": config.get("vocab_size"),
        "layers": config.get("num_hidden_layers"),
        "hidden": config.get("hidden_size"),
    }


def safetensors_tensors_remote(
    repo_id: str, filename: str, revision: str = "main"
) -> dict[str, tuple[str, list]]:
    """name -> (dtype, shape) from a remote safetensors header (Range requests: its length, then the
    JSON), as `helpers.memory` reads a local one: compressed-tensors' few-byte `*.weight_shape`
    tensors with their values."""
    size = struct.unpack("<Q", _read(repo_id, filename, revision, 0, 8)[:8])[0]
    header = json.loads(_read(repo_id, filename, revision, 8, 8 + size)[:size])
    header.pop("__metadata__", None)
    tensors = {name: (t["dtype"], t["shape"]) for name, t in header.items()}
    shapes = {name: t for name, t in header.items() if name.endswith(".weight_shape")}
    # one request for all of them: safetensors stores tensors of one dtype next to each other
    if shapes:
        start = min(t["data_offsets"][0] for t in shapes.values())
        stop = max(t["data_offsets"][1] for t in shapes.values())
        data = _read(repo_id, filename, revision, 8 + size + start, 8 + size + stop)[: stop - start]
        for name, t in shapes.items():
            first, last = t["data_offsets"]
            width = int(t["dtype"][1:]) // 8  # I64 or I32
            chunk = data[first - start : last - start]
            tensors[name] = (
                t["dtype"],
                [
                    int.from_bytes(chunk[i : i + width], "little", signed=True)
                    for i in range(0, len(chunk), width)
                ],
            )
    return tensors
