"""Exercises of notebook 02 (GPTQ), checked on layer 0's `mlp.down_proj` of the course's GPTQ
model."""

from __future__ import annotations

from . import close, learner_weight, say, verdict

LAYER = "model.layers.0.mlp.down_proj"


def _tensors(path=None) -> dict:
    from safetensors import safe_open

    from course import models as course_models

    folder = course_models.model_path("gptq") if path is None else path
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if f"{LAYER}.qweight" in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                return {
                    kind: f.get_tensor(f"{LAYER}.{kind}")
                    for kind in ("qweight", "qzeros", "scales", "g_idx")
                }
    raise FileNotFoundError(f"{LAYER}.qweight is not in {folder}")


def _bytes(in_features: int, out_features: int, group_size: int) -> int:
    groups = in_features // group_size
    return (
        in_features * out_features // 2  # qweight: 4 bits per weight
        + groups * out_features // 2  # qzeros: 4 bits per group and output
        + groups * out_features * 2  # scales: bf16
        + in_features * 4
    )  # g_idx: int32 per input


def check_1(answer_bytes, path=None) -> bool:
    """Exercise 1: bytes of `LAYER`'s four tensors if it were quantized with group size 64."""
    qweight = _tensors(path)["qweight"]
    truth = _bytes(qweight.shape[0] * 8, qweight.shape[1], 64)
    return verdict(
        close(answer_bytes, truth, 0.001),
        say(
            en="four tensors, counted at group size 64.",
            zh="四个张量，按分组大小 64 算对了。",
        ),
        say(
            en="count all four tensors: qweight (4 bits per weight), qzeros (4 bits per group and "
            "output), scales (16 bits per group and output) and g_idx (one int32 per input). "
            "Which of them depend on the group size?",
            zh="把四个张量都算上：qweight（每个权重 4 位）、qzeros（每个分组、每个输出 4 位）、"
            "scales（每个分组、每个输出 16 位）和 g_idx（每个输入一个 int32）。其中哪些取决于"
            "分组大小？",
        ),
    )


def check_2(answer_bits, path=None) -> bool:
    """Exercise 2: bits per weight of `LAYER` as stored (all four tensors), from the file."""
    t = _tensors(path)
    stored = sum(x.numel() * x.element_size() for x in t.values()) * 8
    truth = stored / (t["qweight"].shape[0] * 8 * t["qweight"].shape[1])
    return verdict(
        close(answer_bits, truth, 0.002),
        say(
            en=f"the extra {truth - 4:.3f} bits are the price of the groups.",
            zh=f"多出来的 {truth - 4:.3f} 位就是分组的代价。",
        ),
        say(
            en="divide the bits of all four tensors (numel x element size x 8) by the number of "
            "weights (inputs x outputs); the answer is a little above 4.",
            zh="用四个张量的总位数（numel x 元素字节数 x 8）除以权重个数（输入数 x 输出数）；"
            "答案比 4 稍大一点。",
        ),
    )


def check_3(dequantize, path=None) -> bool:
    """Exercise 3: `dequantize(qweight, qzeros, scales, group_size)` -> float weight [in, out]."""
    import torch

    from helpers.quantize import unpack_int4

    t = _tensors(path)
    q = unpack_int4(t["qweight"], dim=0).float()
    zeros = unpack_int4(t["qzeros"], dim=1).float() + 1  # the gptq layout stores zero - 1
    groups = torch.arange(q.shape[0]) // 128
    truth = (q - zeros[groups]) * t["scales"].float()[groups]
    layout = say(en="qweight packs 8 inputs per int32", zh="qweight 每个 int32 打包 8 个输入")
    got, problem = learner_weight(dequantize, t, truth.shape, layout)
    if problem:
        return verdict(False, "", problem)
    ok = torch.allclose(got, truth, rtol=1e-3, atol=1e-6)
    off_by_one = not ok and torch.allclose(
        got, truth + t["scales"].float()[groups], rtol=1e-3, atol=1e-6
    )
    return verdict(
        ok,
        say(
            en="scale x (q - (stored zero + 1)), group by group.",
            zh="逐个分组计算 scale x (q - (存储的零点 + 1))。",
        ),
        say(
            en="your zero points are off by one: the gptq layout stores zero - 1 (section 2).",
            zh="你的零点差了 1：gptq 布局存的是零点 - 1（第 2 节）。",
        )
        if off_by_one
        else say(
            en="unpack qweight along the inputs and qzeros along the outputs, pick each input's "
            "group (input // group_size), then scale x (q - zero).",
            zh="沿输入方向解包 qweight，沿输出方向解包 qzeros，找出每个输入所在的分组"
            "（input // group_size），再算 scale x (q - zero)。",
        ),
    )
