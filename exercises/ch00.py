"""Exercises of notebook 00 (the environment check)."""

from __future__ import annotations

from . import close, verdict


def _rule(native_bf16: bool, work: str) -> str:
    """The course's one rule (helpers.precision.compute_dtype), asked about a CPU that is not this
    one."""
    from helpers import precision

    original = precision.cpu_bf16
    precision.cpu_bf16 = lambda: (native_bf16, "the exercise's CPU")
    try:
        return precision.compute_dtype("cpu", work).dtype
    finally:
        precision.cpu_bf16 = original


def check_1(answer: dict) -> bool:
    """Exercise 1: {(cpu, work): dtype} the course computes in, for cpu in ("avx2 laptop",
    "amx server") and work in ("batch", "decode")."""
    truth = {
        (cpu, work): _rule(native, work)
        for cpu, native in (("avx2 laptop", False), ("amx server", True))
        for work in ("batch", "decode")
    }
    answer = answer if isinstance(answer, dict) else {}
    wrong = [
        key
        for key, dtype in truth.items()
        if str(answer.get(key, "")).replace("torch.", "") != dtype
    ]
    return verdict(
        not wrong,
        "bf16 wherever it is native; where it is emulated, only for one row at a time.",
        f"look again at {wrong}: which work is memory-bound, "
        "and which CPU multiplies bf16 natively?",
    )


BATCH_OR_DECODE = (
    "calibrating GPTQ on 4 x 256 tokens",
    "the perplexity of a 537-token text",
    "reading a 300-token prompt",
    "generating the 50th token of a reply",
)


def check_2(answer: dict) -> bool:
    """Exercise 2: {work: "batch" or "decode"} for each item of `BATCH_OR_DECODE`."""
    truth = dict(zip(BATCH_OR_DECODE, ("batch", "batch", "batch", "decode"), strict=True))
    answer = answer if isinstance(answer, dict) else {}
    wrong = [work for work, kind in truth.items() if answer.get(work) != kind]
    return verdict(
        not wrong,
        "many rows at once is batch work, even a prompt; one new token at a time is decoding.",
        f"look again at {wrong}: how many rows does each multiply by the weights in one step?",
    )


def check_3(answer: dict, bandwidth_Bps: float = 20e9, path=None) -> bool:
    """Exercise 3: {"bfloat16": tok/s, "float32": tok/s}, the decode ceilings of the course's `hf`
    model at `bandwidth_Bps` bytes per second, if every weight is read once per token in that
    dtype."""
    from safetensors import safe_open

    from course import models as course_models

    params = 0
    for file in sorted((path or course_models.model_path("hf")).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                params += n
    truth = {"bfloat16": bandwidth_Bps / (2 * params), "float32": bandwidth_Bps / (4 * params)}
    answer = answer if isinstance(answer, dict) else {}
    ok = all(close(answer.get(k), v, 0.01) for k, v in truth.items())
    return verdict(
        ok,
        "half the bytes, twice the ceiling: why decoding is faster in bf16 even where its "
        "arithmetic is emulated.",
        "count the parameters in the hf model's safetensors file; a token reads each one once: "
        "2 bytes in bf16, 4 in fp32; divide the bandwidth by the bytes.",
    )
