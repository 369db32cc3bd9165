"""Exercises of notebook 01 (download), checked against the course's hub helpers."""

from __future__ import annotations

from . import attempt, say, verdict

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
        say(
            en="embedding + every layer's attention and MLP + norms (+ a head, if untied).",
            zh="嵌入层 + 每一层的注意力和 MLP + 各个 norm（如果没有共享，再加一个输出头）。",
        ),
        say(
            en="count the embedding (vocab x hidden), then per layer q/o (hidden x heads x "
            "head_dim), k/v (hidden x kv_heads x head_dim; Qwen2 adds biases to q/k/v), the gated "
            "MLP (3 x hidden x intermediate) and two norms; an output head only if the embedding "
            "is not tied."
            + (" You are within 1%: look for the small terms." if off < 0.01 else ""),
            zh="先算嵌入层（vocab x hidden），再算每一层的 q/o（hidden x heads x head_dim）、"
            "k/v（hidden x kv_heads x head_dim；Qwen2 给 q/k/v 加了偏置）、带门控的 MLP"
            "（3 x hidden x intermediate）和两个 norm；只有嵌入层没有共享（tied）时才另算输出头。"
            + ("已经相差不到 1%：找找那些小项。" if off < 0.01 else ""),
        ),
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
                say(
                    en=f"wrong for {name} ({len(data):,} bytes): open in binary mode, update "
                    "the hash with every piece, return hexdigest().",
                    zh=f"{name}（{len(data):,} 字节）算错了：用二进制模式打开，每读一块就更新"
                    "一次哈希，最后返回 hexdigest()。",
                ),
            )
    return verdict(
        True,
        say(
            en="the digest the hub lists for a file is what you compare it with.",
            zh="Hub 为每个文件列出的摘要，就是你拿来对照的值。",
        ),
        "",
    )


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
                say(
                    en=f"wrong for the pattern {pattern!r}: shell-style wildcards (fnmatch), "
                    "matched against the whole path, case-sensitive.",
                    zh=f"模式 {pattern!r} 的结果不对：用 shell 风格的通配符（fnmatch），"
                    "匹配整个路径，区分大小写。",
                ),
            )
    return verdict(
        True,
        say(
            en="glob patterns over whole paths, case-sensitive, as hf download does.",
            zh="和 hf download 一样：通配符匹配整个路径，区分大小写。",
        ),
        "",
    )
