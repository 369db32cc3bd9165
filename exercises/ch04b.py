"""Exercises of notebook 04b (making GGUF types), checked against `gguf`'s constants and the files
it made."""

from __future__ import annotations

from pathlib import Path

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


def _widths_file(folder) -> Path:
    """A small GGUF of F32 tensors, some of whose rows fit a K-quant super-block and some not."""
    import gguf
    import numpy as np

    path = Path(folder) / "widths.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, shape in [
        ("blk.0.attn_norm.weight", (512,)),
        ("blk.0.ffn_up.weight", (3, 512)),  # numpy [rows, width]: GGUF lists the width first
        ("blk.0.ffn_down.weight", (512, 3)),
        ("blk.0.attn_q.weight", (2, 640)),
        ("blk.0.attn_k.weight", (640, 2)),
        ("output_norm.weight", (640,)),
    ]:
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def check_3(fell_back, path=None) -> bool:
    """Exercise 3: `fell_back(path)` -> the names of the matrices (2-D tensors) of a GGUF file whose
    rows no K-quant type can store, whatever type they are in. Tried on the course's Q4_K_M file,
    the files notebook 04b made, and a small file of its own."""
    import tempfile

    import gguf

    from course import models as course_models
    from helpers import gguf_tools

    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K][0]
    files = [path or course_models.model_path("gguf")]
    files += [] if path else sorted(_types_dir().glob("*.gguf"))
    with tempfile.TemporaryDirectory(prefix="qllm-ex04b-") as folder:
        files.append(_widths_file(folder))
        for file in files:
            tensors = gguf_tools.read_gguf(file).tensors
            truth = {t.name for t in tensors if len(t.shape) == 2 and t.shape[0] % block}
            got, error = attempt(fell_back, file)
            if error:
                return verdict(False, "", f"{error} (on {file.name})")
            try:
                got = set(got)
            except TypeError:
                return verdict(False, "", "return the tensors' names: a list or a set of str.")
            if got == truth:
                continue
            by_last = {t.name for t in tensors if len(t.shape) == 2 and t.shape[-1] % block}
            if got == by_last:
                hint = (
                    "you measured the wrong dimension: GGUF lists a tensor's dimensions the "
                    "other way round from PyTorch and numpy. Which one is the length of a row?"
                )
            elif got & {t.name for t in tensors if len(t.shape) != 2}:
                hint = (
                    "only matrices are quantized: the 1-D tensors (norms) stay F32 in every type, "
                    "whatever their width."
                )
            else:
                hint = (
                    f"wrong for {file.name}: a row fits a K-quant when its length is a multiple of "
                    "a super-block (your k_quant_fits); judge every matrix by its rows, not by the "
                    "type it got."
                )
            return verdict(False, "", hint)
    return verdict(
        True,
        "on this model, every matrix that reads the 640-wide hidden state, the embedding "
        "among them: the quantizer stored them in older, non-K types.",
        "",
    )
