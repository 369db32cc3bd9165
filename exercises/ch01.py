"""Exercises of notebook 01 (download), checked against the course's hub helpers."""

from __future__ import annotations

from . import attempt, verdict

# Qwen2.5-0.5B-Instruct's shape, as its config.json states it
QWEN25_05B_CONFIG = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def check_1(answer_params, config: dict = QWEN25_05B_CONFIG) -> bool:
    """Exercise 1: the parameter count of a model with this config.json."""
    from helpers import model_info

    truth = model_info.param_count(config)
    try:
        off = abs(int(answer_params) - truth) / truth
    except (TypeError, ValueError):
        off = 1.0
    return verdict(
        off == 0,
        "embedding + every layer's attention and MLP + norms (+ a head, if untied).",
        "count the embedding (vocab x hidden), then per layer q/o (hidden x heads x head_dim), k/v "
        "(hidden x kv_heads x head_dim; Qwen2 adds biases to q/k/v), the gated MLP (3 x hidden x "
        "intermediate) and two norms; an output head only if the embedding is not tied."
        + (" You are within 1%: look for the small terms." if off < 0.01 else ""),
    )


def check_2(sha256_of) -> bool:
    """Exercise 2: `sha256_of(path)` -> the hex sha256 of a file, read in pieces."""
    import hashlib
    import os
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="qllm-ex01-"))
    files = {
        "empty.bin": b"",
        "small.txt": "量化 quantization\n".encode(),
        "big.bin": os.urandom(3 * 2**20 + 7),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        got, error = attempt(sha256_of, folder / name, on=name)
        if error:
            return verdict(False, "", error)
        if got != hashlib.sha256(data).hexdigest():
            return verdict(
                False,
                "",
                f"wrong for {name} ({len(data):,} bytes): open in binary mode, update "
                "the hash with every piece, return hexdigest().",
            )
    return verdict(True, "the digest the hub lists for a file is what you compare it with.", "")


def check_3(pick) -> bool:
    """Exercise 3: `pick(paths, pattern)` -> the paths `hf download --include pattern` would
    fetch."""
    from huggingface_hub.utils import filter_repo_objects  # the filter `hf download --include` uses

    paths = [
        "config.json",
        "model.safetensors",
        "gemma-3-270m-Q4_K_M.gguf",
        "gemma-3-270m-Q8_0.gguf",
        "sub/model-Q4_K_M.gguf",
        "README.md",
        "tokenizer.json",
    ]
    for pattern in ("*.gguf", "*Q4_K_M*", "*.json", "sub/*", "*.GGUF"):
        want = list(filter_repo_objects(paths, allow_patterns=[pattern]))
        got, error = attempt(lambda p: list(pick(list(paths), p)), pattern)
        if error:
            return verdict(False, "", error)
        if sorted(got) != sorted(want):
            return verdict(
                False,
                "",
                f"wrong for the pattern {pattern!r}: shell-style wildcards (fnmatch), "
                "matched against the whole path, case-sensitive.",
            )
    return verdict(True, "glob patterns over whole paths, case-sensitive, as hf download does.", "")
