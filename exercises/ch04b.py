"""Exercises of notebook 04b (making GGUF types), checked against `gguf`'s constants and the files
it made."""

from __future__ import annotations

from pathlib import Path

from . import attempt, close, say, verdict


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
        say(
            en="K-quants pack whole super-blocks; a row must be a multiple of their size.",
            zh="K-quant 按整个超级块打包；一行的长度必须是超级块大小的整数倍。",
        ),
        say(
            en=f"wrong for row widths {wrong}: how many weights does one Q4_K block hold?",
            zh=f"行宽 {wrong} 判断错了：一个 Q4_K 块能放多少个权重？",
        ),
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
        raise FileNotFoundError(
            say(
                en=f"{path} is missing: run section 1 of notebook 04b first",
                zh=f"{path} 不存在：先运行 notebook 04b 的第 1 节",
            )
        )
    header = gguf_tools.read_gguf(path)
    truth = sum(t.n_bytes for t in header.tensors) * 8 / header.n_params
    return verdict(
        close(answer_bits, truth, 0.002),
        say(
            en="every tensor's bytes over every weight: the 8-bit embedding "
            "and the 32-bit norms pull the average above Q4_0's 4.5.",
            zh="所有张量的字节数除以所有权重：8 位的嵌入层和 32 位的 norm 把平均值拉到了 Q4_0 "
            "的 4.5 之上。",
        ),
        say(
            en="add the bytes of every tensor in the header (n_bytes), times 8, over the number of "
            "weights (n_params).",
            zh="把文件头里每个张量的字节数（n_bytes）加起来，乘以 8，再除以权重个数（n_params）。",
        ),
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
                return verdict(
                    False,
                    "",
                    say(en=f"{error} (on {file.name})", zh=f"{error}（在 {file.name} 上）"),
                )
            try:
                got = set(got)
            except TypeError:
                return verdict(
                    False,
                    "",
                    say(
                        en="return the tensors' names: a list or a set of str.",
                        zh="返回张量的名字：一个由 str 组成的列表或集合。",
                    ),
                )
            if got == truth:
                continue
            by_last = {t.name for t in tensors if len(t.shape) == 2 and t.shape[-1] % block}
            if got == by_last:
                hint = say(
                    en="you measured the wrong dimension: GGUF lists a tensor's dimensions the "
                    "other way round from PyTorch and numpy. Which one is the length of a row?",
                    zh="你量错了维度：GGUF 列出张量维度的顺序和 PyTorch、numpy 正好相反。"
                    "哪一个才是一行的长度？",
                )
            elif got & {t.name for t in tensors if len(t.shape) != 2}:
                hint = say(
                    en="only matrices are quantized: the 1-D tensors (norms) stay F32 in every "
                    "type, whatever their width.",
                    zh="只有矩阵会被量化：一维张量（norm）在每种类型里都保持 F32，不管它有多宽。",
                )
            else:
                hint = say(
                    en=f"wrong for {file.name}: a row fits a K-quant when its length is a "
                    "multiple of a super-block (your k_quant_fits); judge every matrix by its "
                    "rows, not by the type it got.",
                    zh=f"{file.name} 判断错了：一行的长度是超级块的整数倍时才放得进 K-quant"
                    "（就是你的 k_quant_fits）；按每个矩阵的行来判断，而不是看它最后得到的类型。",
                )
            return verdict(False, "", hint)
    return verdict(
        True,
        say(
            en="on this model, every matrix that reads the 640-wide hidden state, the embedding "
            "among them: the quantizer stored them in older, non-K types.",
            zh="在这个模型上，就是每个读取 640 维隐藏状态的矩阵，嵌入层也在其中：量化工具把它们"
            "存成了较老的非 K 类型。",
        ),
        "",
    )
