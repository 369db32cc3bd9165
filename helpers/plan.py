"""A plan before the download: what each model file of a repo would cost on this machine, from
headers only.

    bandwidth = timing.copy_bandwidth(threads=env.default_threads())
    eff = {
        "llama.cpp": efficiency(run.median("decode_tok_s"), timing.bytes_per_token(lm), bandwidth)
    }
    pd.DataFrame(
        plan("bartowski/Mistral-7B-Instruct-v0.3-GGUF", efficiency=eff, bandwidth=bandwidth)
    )

One row per candidate: each GGUF file (the parts of a split one together), or the safetensors set
of a Transformers repo (GPTQ, AWQ, compressed-tensors, plain). Only GGUF/safetensors headers and
JSON travel. predicted tok/s = ceiling (bandwidth / bytes read per token) x efficiency, where
efficiency is what this machine reached on a measured model of the same backend: its measured
decode tok/s / its own ceiling.
"""

from __future__ import annotations

import re

from . import hub, model_info
from .downloading import choose_model_files
from .errors import NoMatchingFilesError
from .gguf_tools import file_type_name
from .loading import config_format
from .memory import (
    checkpoint_dtype,
    free_memory_bytes,
    in_memory_bytes,
    memory_needed,
    repacked_bytes,
    pick_device,
    resolve_dtype,
    tensors_in_memory,
    weight_names,
)
from .timing import decode_ceiling, gguf_bytes_per_token, weights_read_per_token

SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama.cpp's split files: model-00001-of-00003.gguf


def efficiency(decode_tok_s: float, bytes_per_token: int, bandwidth: float) -> float:
    """How close a measured run came to its ceiling: measured decode tok/s / (bandwidth / bytes per
    token)."""
    return decode_tok_s / decode_ceiling(bandwidth, bytes_per_token)


def plan(
    repo_id: str,
    efficiency: dict | None = None,
    bandwidth: float | None = None,
    revision: str = "main",
    device: str = "auto",
    free_ram: int | None = None,
    free_vram: int | None = None,
) -> list[dict]:
    """One row per candidate of `repo_id`: download_bytes; memory_bytes, by load_model's fit rule on
    `device`; fits_RAM (and fits_VRAM with a GPU); bytes_per_token, the weights each decoded token
    reads; and, given `bandwidth` (bytes/s) and `efficiency` ({"llama.cpp": e, "transformers": e}),
    ceiling_tok_s and predicted_tok_s = ceiling x efficiency. free_ram / free_vram replace the
    measured free memory."""
    listing = hub.list_files(repo_id, revision=revision)
    files = hub.pick(listing, include=["*.gguf", "*.safetensors"], repo_id=repo_id)
    device = pick_device(device)
    rows = [_gguf_row(repo_id, parts, revision) for parts in _gguf_groups(files).values()]
    if "config.json" in {f.path for f in listing} and any(
        f.path.endswith(".safetensors") for f in files
    ):
        rows.append(_safetensors_row(repo_id, listing, revision, device))
    if not rows:
        raise NoMatchingFilesError(
            f"{repo_id} has no .gguf model file and no config.json with *.safetensors "
            "weights: nothing to plan (plan reads only GGUF and safetensors headers)."
        )
    free_ram = free_memory_bytes("cpu") if free_ram is None else free_ram
    if free_vram is None and device.startswith("cuda"):
        free_vram = free_memory_bytes(device)
    for row in rows:
        row["fits_RAM"] = row["memory_bytes"] <= free_ram
        if free_vram is not None:
            row["fits_VRAM"] = row["memory_bytes"] <= free_vram
        share = (efficiency or {}).get("llama.cpp" if row["format"] == "gguf" else "transformers")
        row["ceiling_tok_s"] = (
            decode_ceiling(bandwidth, row["bytes_per_token"]) if bandwidth else None
        )
        row["predicted_tok_s"] = row["ceiling_tok_s"] * share if bandwidth and share else None
    return rows


def _gguf_groups(files) -> dict[str, list]:
    """The .gguf files by model: a split file's parts together; multimodal projectors (mmproj) left
    out."""
    groups: dict[str, list] = {}
    for f in files:
        if f.path.endswith(".gguf") and "mmproj" not in f.path.lower():
            groups.setdefault(SPLIT.sub(".gguf", f.path), []).append(f)
    return groups


def _gguf_row(repo_id: str, parts: list, revision: str) -> dict:
    headers = [model_info.gguf_header_remote(repo_id, f.path, revision) for f in parts]
    merged = {
        key: {k: v for h in headers for k, v in h[key].items()}
        for key in ("shapes", "tensor_bytes", "types")
    }
    size = sum(f.size for f in parts)
    return {
        "candidate": SPLIT.sub(".gguf", parts[0].path),
        "format": "gguf",
        "dtype": file_type_name(headers[0]["metadata"].get("general.file_type")),
        "download_bytes": size,
        "memory_bytes": memory_needed(size + repacked_bytes(merged), "gguf"),
        "bytes_per_token": gguf_bytes_per_token(merged),
    }


def _safetensors_row(repo_id: str, files: list, revision: str, device: str) -> dict:
    """The safetensors set, loaded as load_model would on `device`: its format, dtype and fit
    rule."""
    config = model_info.read_json(repo_id, "config.json", revision)
    fmt = config_format(config, repo_id)
    names = [f.path for f in files if "/" not in f.path]
    index = "model.safetensors.index.json"
    weights = weight_names(
        names,
        model_info.read_json(repo_id, index, revision)["weight_map"] if index in names else None,
    )
    tensors = {}
    for name in weights:
        tensors.update(model_info.safetensors_tensors_remote(repo_id, name, revision))
    # what load_model picks, and casts to unless it is the checkpoint's
    dtype = resolve_dtype(config, fmt, device).dtype
    on_disk = sum(f.size for f in files if f.path in weights)
    loaded = in_memory_bytes(tensors, on_disk, None if dtype == checkpoint_dtype(config) else dtype)
    each = tensors_in_memory(tensors, dtype)
    embedding = next((n for n in each if n.endswith("embed_tokens.weight")), "")
    head = next((n for n in each if n.endswith("lm_head.weight")), "")
    rows = tensors.get(embedding, ("", [1]))[1][0]
    return {
        "candidate": f"{len(weights)} safetensors file(s)",
        "format": fmt,
        "dtype": dtype,
        "download_bytes": sum(f.size for f in choose_model_files(files, repo_id=repo_id)),
        "memory_bytes": memory_needed(loaded, fmt),
        "bytes_per_token": weights_read_per_token(each, embedding, head, rows),
    }
