"""Exercises of notebook 04 (GGUF), checked against the `gguf` package's constants and the course's file."""

from __future__ import annotations

from . import close, verdict

TYPES = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K")


def _bits_per_weight(name: str) -> float:
    import gguf

    block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    return type_bytes * 8 / block


def check_1(answer: dict) -> bool:
    """Exercise 1: {type name: bits per weight} for each of `TYPES`, scales and minimums included."""
    answer = answer if isinstance(answer, dict) else {}
    wrong = [t for t in TYPES if not close(answer.get(t), _bits_per_weight(t), 0.001)]
    return verdict(not wrong, "bytes per block x 8 / weights per block, for every type.",
                   f"check {', '.join(wrong)}: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.NAME] gives "
                   "(weights per block, bytes per block).")


def check_2(answer: dict, path=None) -> bool:
    """Exercise 2: {type name: share of the file's tensor bytes} for the course's Q4_K_M file."""
    from course import models as course_models
    from helpers import gguf_tools

    by_type = gguf_tools.bytes_by_type(gguf_tools.validate_gguf(path or course_models.model_path("gguf")))
    total = sum(by_type.values())
    answer = answer if isinstance(answer, dict) else {}
    wrong = sorted(set(by_type) | set(answer))
    wrong = [t for t in wrong if not (t in answer and abs(float(answer[t]) - by_type.get(t, 0) / total) <= 0.005)]
    return verdict(not wrong, "a \"Q4_K_M\" file whose rows are 640 wide is mostly other types (section 1).",
                   f"check {', '.join(wrong)}: every tensor type in the header, with its bytes over all tensor bytes.")


def check_3(k_quant_fits) -> bool:
    """Exercise 3: `k_quant_fits(row_width)` -> can a row of this many weights be stored in a K-quant type?"""
    import gguf

    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K][0]
    widths = [640, 2048, 256, 1152, 4096, 5120, 14336, 896, 3072]
    try:
        wrong = [w for w in widths if bool(k_quant_fits(w)) != (w % block == 0)]
    except Exception as err:
        return verdict(False, "", f"your function raised {type(err).__name__}: {err}")
    return verdict(not wrong, "K-quants pack whole super-blocks; a row must be a multiple of their size.",
                   f"wrong for row widths {wrong}: how many weights does one Q4_K block hold?")
