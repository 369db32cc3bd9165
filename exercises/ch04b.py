"""Exercises of notebook 04b (making GGUF types), checked against `gguf`'s constants and the files
it made."""

from __future__ import annotations

from . import attempt, close, verdict


def check_1(k_quant_fits) -> bool:
    """Exercise 1: `k_quant_fits(row_width)` -> can a row of this many weights be stored in a
    K-quant type?"""
    import gguf

    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K][0]
    widths = [640, 2048, 256, 1152, 4096, 5120, 14336, 896, 3072]
    wrong, error = attempt(lambda: [w for w in widths if bool(k_quant_fits(w)) != (w % block == 0)])
    if error:
        return verdict(False, "", error)
    return verdict(
        not wrong,
        "K-quants pack whole super-blocks; a row must be a multiple of their size.",
        f"wrong for row widths {wrong}: how many weights does one Q4_K block hold?",
    )


def _types_dir():
    from course import models as course_models

    return course_models.cache_dir() / "gguf-types"


def check_2(answer_bits, path=None) -> bool:
    """Exercise 2: average bits per weight of the Q4_0 file notebook 04b made (all tensor bytes x
    8 / weights)."""
    from helpers import gguf_tools

    path = path or _types_dir() / "gemma-3-270m-Q4_0.gguf"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run section 1 of notebook 04b first")
    header = gguf_tools.read_gguf(path)
    truth = sum(t.n_bytes for t in header.tensors) * 8 / header.n_params
    return verdict(
        close(answer_bits, truth, 0.002),
        "every tensor's bytes over every weight: the 8-bit embedding "
        "and the 32-bit norms pull the average above Q4_0's 4.5.",
        "add the bytes of every tensor in the header (n_bytes), times 8, over the number of "
        "weights (n_params).",
    )


def check_3(answer_type: str, path=None) -> bool:
    """Exercise 3: the type of `token_embd.weight` in the course's Q4_K_M file."""
    from course import models as course_models
    from helpers import gguf_tools

    header = gguf_tools.read_gguf(path or course_models.model_path("gguf"))
    truth = next(t.type_name for t in header.tensors if t.name == "token_embd.weight")
    return verdict(
        str(answer_type).upper() == truth,
        "its rows are 640 wide, so no K-quant fits it.",
        "look it up in the header's tensor table (gguf_tools.read_gguf(path).tensors, by name).",
    )
