"""Quality of a quantized model: perplexity on a held-out text, and agreement with full precision."""

from __future__ import annotations

import contextlib
import math
from importlib import resources

import numpy as np


def heldout_text() -> str:
    """The course's held-out evaluation text (never used for calibration)."""
    return resources.files("helpers").joinpath("data/heldout.txt").read_text(encoding="utf-8")


def calibration_text() -> str:
    """The course's calibration text (used only to quantize)."""
    return resources.files("helpers").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def _nll_from_logits(logits: np.ndarray, token_ids: list[int], chunk: int = 64) -> np.ndarray:
    """Negative log-likelihood of token_ids[1:] given logits[:-1].

    Worked in chunks of rows: a 262k-token vocabulary makes each row 1 MB, and a float64 copy of
    all of them would cost gigabytes."""
    targets = np.asarray(token_ids[1:])
    nll = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), chunk):
        rows = logits[start:start + chunk].astype(np.float32)[: len(targets) - start]
        peak = rows.max(axis=-1, keepdims=True)
        log_norm = peak[:, 0].astype(np.float64) + np.log(np.exp(rows - peak).sum(axis=-1, dtype=np.float64))
        picked = rows[np.arange(len(rows)), targets[start:start + len(rows)]]
        nll[start:start + len(rows)] = log_norm - picked
    return nll


def transformers_logits(model, token_ids: list[int]) -> np.ndarray:
    """Next-token logits (float32 numpy) of a Transformers model for one sequence.

    A 16-bit output layer on a CPU without native bf16 runs in float32 here (helpers.precision,
    "batch"): Gemma's 262k-row output layer over 537 held-out tokens took 11 of a 13-second
    perplexity pass in emulated bf16, and 2.7 s in float32 (measured under the AVX2 emulation)."""
    import torch

    with torch.inference_mode(), _output_layer_in_fp32(model):
        ids = torch.tensor([token_ids], device=model.device)
        return model(ids).logits[0].float().cpu().numpy()


@contextlib.contextmanager
def _output_layer_in_fp32(model, rows: int = 32768):
    """Temporarily compute the output layer in float32, `rows` vocabulary rows at a time (84 MB each)."""
    import torch

    from .precision import compute_dtype

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cpu"
            or head.weight.dtype == torch.float32 or compute_dtype("cpu", "batch").dtype != "float32"):
        yield
        return

    def forward(x):
        x = x.float()
        bias = head.bias.float() if head.bias is not None else None
        return torch.cat([torch.nn.functional.linear(x, head.weight[i:i + rows].float(),
                                                     None if bias is None else bias[i:i + rows])
                          for i in range(0, head.weight.shape[0], rows)], dim=-1)

    head.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del head.forward


def llama_cpp_logits(llm, token_ids: list[int]) -> np.ndarray:
    """Next-token logits of a llama_cpp.Llama created with logits_all=True."""
    if len(token_ids) > llm.n_ctx():
        raise ValueError(f"{len(token_ids)} tokens do not fit n_ctx={llm.n_ctx()}; create Llama with a larger n_ctx")
    llm.reset()
    llm.eval(token_ids)
    return np.array(llm.scores[: len(token_ids)], dtype=np.float32)  # a copy: the next eval overwrites scores


def perplexity_from_logits(logits: np.ndarray, token_ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of the sequence."""
    return float(math.exp(_nll_from_logits(logits, token_ids).mean()))


def top1_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Fraction of positions where both models would pick the same next token."""
    n = min(len(logits), len(reference_logits))
    return float((logits[:n].argmax(-1) == reference_logits[:n].argmax(-1)).mean())


def transformers_perplexity(model, tokenizer, text: str | None = None) -> float:
    """Perplexity of a Transformers model on `text` (default: the course held-out text)."""
    ids = tokenizer(text or heldout_text())["input_ids"]
    return perplexity_from_logits(transformers_logits(model, ids), ids)


def gguf_perplexity(gguf_path, text: str | None = None, n_threads: int | None = None) -> float:
    """Perplexity of a GGUF file through llama.cpp on `text` (default: the held-out text)."""
    from .loading import new_llama

    text = text or heldout_text()
    ids = gguf_token_ids(gguf_path, text)
    n_ctx = -(-(len(ids) + 8) // 256) * 256  # llama.cpp rounds n_ctx up to 256; keep Python's buffers equal
    llm = new_llama(gguf_path, n_ctx=n_ctx, logits_all=True, n_threads=n_threads, n_batch=512)
    try:
        return perplexity_from_logits(llama_cpp_logits(llm, ids), ids)
    finally:
        llm.close()


def gguf_token_ids(path, text: str) -> list[int]:
    """How llama.cpp tokenizes `text` with this GGUF's vocabulary (loads the vocabulary only)."""
    from .loading import new_llama

    vocab = new_llama(path, vocab_only=True)
    try:
        return vocab.tokenize(text.encode("utf-8"), add_bos=True)
    finally:
        vocab.close()
