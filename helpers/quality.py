"""Quality of a quantized model: perplexity on a held-out text, and agreement with full precision.

quality.transformers_perplexity(lm.model, lm.tokenizer)   # on the course's held-out text
quality.gguf_perplexity(path)                             # the same through llama.cpp
"""

from __future__ import annotations

import contextlib
import math
from importlib import resources

import numpy as np

from .generation import claim, suggest_n_ctx
from .loading import new_llama
from .precision import compute_dtype, products_in_fp32


def heldout_text(language: str = "en") -> str:
    """The course's held-out evaluation text, "en" or "zh" (never used for calibration:
    course/models.py reads that)."""
    name = {"en": "heldout.txt", "zh": "heldout_zh.txt"}[language]
    return resources.files("helpers").joinpath("data", name).read_text(encoding="utf-8")


def perplexity_from_logits(logits: np.ndarray, token_ids: list[int], chunk: int = 64) -> float:
    """exp(mean negative log-likelihood of token_ids[1:] given logits[:-1]).

    Worked in chunks of rows: a 262k-token vocabulary makes each row 1 MB, and a float64 copy of
    all of them would cost gigabytes."""
    targets = np.asarray(token_ids[1:])
    nll = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), chunk):
        rows = logits[start : start + chunk].astype(np.float32)[: len(targets) - start]
        peak = rows.max(axis=-1, keepdims=True)
        log_norm = peak[:, 0].astype(np.float64) + np.log(
            np.exp(rows - peak).sum(axis=-1, dtype=np.float64)
        )
        nll[start : start + len(rows)] = (
            log_norm - rows[np.arange(len(rows)), targets[start : start + len(rows)]]
        )
    return float(math.exp(nll.mean()))


def top1_agreement(predicted, reference) -> float:
    """Fraction of positions where two models pick the same next token (from logits, or argmax
    ids)."""
    predicted, reference = (np.asarray(x) for x in (predicted, reference))
    predicted, reference = (x.argmax(-1) if x.ndim == 2 else x for x in (predicted, reference))
    n = min(len(predicted), len(reference))
    return float((predicted[:n] == reference[:n]).mean())


def transformers_logits(model, token_ids: list[int]) -> np.ndarray:
    """Next-token logits (float32 numpy) of a Transformers model for one sequence.

    On a CPU without native bf16 its 16-bit products run in float32 here (helpers.precision,
    "batch"): emulated bf16 is several times slower there (docs/measurements.md)."""
    import torch

    with claim(model), torch.inference_mode(), _products_in_fp32(model):
        ids = torch.tensor([token_ids], device=model.device)
        return model(ids).logits[0].float().cpu().numpy()


def _products_in_fp32(model):
    """precision.products_in_fp32 for `model`'s perplexity pass, where the rule computes many-row
    work in float32 (bf16 emulated); otherwise nothing changes."""
    if compute_dtype("cpu", "batch").dtype != "float32":
        return contextlib.nullcontext()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return products_in_fp32(head=head)


def gguf_logits(path, token_ids: list[int], **llama_kwargs) -> np.ndarray:
    """Next-token logits of a GGUF file through llama.cpp at every position of `token_ids`."""
    # n_ctx a multiple of 256: llama.cpp rounds it up, and llama-cpp-python's buffers must match
    llm = new_llama(
        path, n_ctx=suggest_n_ctx(len(token_ids), 8), logits_all=True, n_batch=512, **llama_kwargs
    )
    try:
        llm.eval(token_ids)
        # a copy: scores dies with llm
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
    finally:
        llm.close()


def transformers_perplexity(model, tokenizer, text: str | None = None) -> float:
    """Perplexity of a Transformers model on `text` (default: the course held-out text)."""
    ids = tokenizer(text or heldout_text())["input_ids"]
    return perplexity_from_logits(transformers_logits(model, ids), ids)


def gguf_perplexity(gguf_path, text: str | None = None, n_threads: int | None = None) -> float:
    """Perplexity of a GGUF file through llama.cpp on `text` (default: the held-out text)."""
    ids = gguf_token_ids(gguf_path, text or heldout_text())
    return perplexity_from_logits(gguf_logits(gguf_path, ids, n_threads=n_threads), ids)


def gguf_token_ids(path, text: str) -> list[int]:
    """How llama.cpp tokenizes `text` with this GGUF's vocabulary (loads the vocabulary only)."""
    vocab = new_llama(path, vocab_only=True)
    try:
        return vocab.tokenize(text.encode("utf-8"), add_bos=True)
    finally:
        vocab.close()
