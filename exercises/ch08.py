"""Exercises of notebook 08 (the comparison), checked against the results file the notebook
wrote."""

from __future__ import annotations

import json
from pathlib import Path

from . import close, verdict

RESULTS = Path("build/08_results.json")  # the notebook's default, relative to the course folder


def _results(results=None) -> dict:
    path = Path(results or RESULTS)
    if not path.is_absolute():
        root = next(
            (p for p in [Path.cwd(), *Path.cwd().parents] if (p / path).exists()), Path.cwd()
        )
        path = root / path
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run notebook 08 (or `python -m bench --out {path}`) first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_1(answer_tok_s, weight_bytes: float = 4.1e9, results=None) -> bool:
    """Exercise 1: the decode ceiling, in tokens/s, of a model that reads `weight_bytes` per token,
    on the machine that wrote the results (its best copy bandwidth)."""
    truth = _results(results)["bandwidth"]["cpu_Bps"] / weight_bytes
    return verdict(
        close(answer_tok_s, truth, 0.01),
        "one token reads every weight once: bandwidth / bytes.",
        "divide the machine's copy bandwidth (the results' `bandwidth`, best of its thread counts) "
        "by the bytes read per token.",
    )


def check_2(answer_bytes, fmt: str = "gptq", results=None) -> bool:
    """Exercise 2: bytes of weights `fmt` reads per generated token (the results'
    `bytes_per_token`)."""
    truth = next(r for r in _results(results)["results"] if r["format"] == fmt)["bytes_per_token"]
    return verdict(
        close(answer_bytes, truth, 0.01),
        "every quantized linear, the norms, and the tied embedding once as the output layer.",
        "count every tensor a token passes through; the embedding table is looked up for one row, "
        "but Gemma ties it to the output layer, which multiplies by all of it.",
    )


def check_3(answer_format: str, results=None) -> bool:
    """Exercise 3: the 4-bit format closest to the reference in top-1 agreement, in this run."""
    rows = [
        r
        for r in _results(results)["results"]
        if r.get("top1_agreement") is not None and not r["format"].startswith("hf")
    ]
    best = max(rows, key=lambda r: r["top1_agreement"])["format"]
    return verdict(
        answer_format == best,
        "top-1 agreement: how often it picks the reference's next token.",
        "read the top-1 agreement column of section 5 for the 4-bit formats only.",
    )
