"""Exercises of notebook 03 (AWQ), checked on layer 0's `mlp.down_proj` of the course's AWQ and GPTQ
models."""

from __future__ import annotations

from . import attempt, learner_weight, say, verdict

LAYER = "model.layers.0.mlp.down_proj"
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # storage slot k of an int32 holds output column AWQ_ORDER[k]


def _tensors(fmt: str, path=None) -> dict:
    from safetensors import safe_open

    from course import models as course_models

    folder = course_models.model_path(fmt) if path is None else path
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if f"{LAYER}.qweight" in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                return {
                    k[len(LAYER) + 1 :]: f.get_tensor(k)
                    for k in f.keys()  # noqa: SIM118 - a safe_open handle is not iterable
                    if k.startswith(LAYER + ".")
                }
    raise FileNotFoundError(f"{LAYER}.qweight is not in {folder}")


def check_1(answer_bytes, awq_path=None, gptq_path=None) -> bool:
    """Exercise 1: how many more bytes GPTQ's `LAYER` takes than AWQ's (negative if fewer)."""
    size = lambda t: sum(x.numel() * x.element_size() for x in t.values())  # noqa: E731
    truth = size(_tensors("gptq", gptq_path)) - size(_tensors("awq", awq_path))
    try:
        ok = int(answer_bytes) == truth
    except (TypeError, ValueError):
        ok = False
    return verdict(
        ok,
        say(
            en="the packing differs, the bytes do not: only one GPTQ tensor has no AWQ "
            "counterpart.",
            zh="打包方式不同，字节数却一样：只有一个 GPTQ 张量在 AWQ 里没有对应。",
        ),
        say(
            en="list the tensors of both layers with their shapes and dtypes (section 2 of each "
            "notebook); qweight, qzeros and scales hold the same number of bits in both formats.",
            zh="列出两个层的所有张量及其形状和 dtype（两个 notebook 的第 2 节）；qweight、qzeros "
            "和 scales 在两种格式里的位数相同。",
        ),
    )


def _unpack(packed, order):
    from helpers.quantize import unpack_int4

    raw = unpack_int4(packed, dim=1)  # [rows, cols * 8], storage order
    undo = [order.index(c) for c in range(8)]
    return raw.view(packed.shape[0], -1, 8)[:, :, undo].reshape(packed.shape[0], -1)


def check_2(dequantize, path=None) -> bool:
    """Exercise 2: `dequantize(qweight, qzeros, scales, group_size)` -> float weight [in, out] of an
    AWQ layer."""
    import torch

    t = _tensors("awq", path)
    groups = torch.arange(t["qweight"].shape[0]) // 128

    def weight(order):
        q, z = _unpack(t["qweight"], order).float(), _unpack(t["qzeros"], order).float()
        return (q - z[groups]) * t["scales"].float()[groups]

    truth = weight(AWQ_ORDER)
    layout = say(en="AWQ packs 8 outputs per int32", zh="AWQ 每个 int32 打包 8 个输出")
    got, problem = learner_weight(dequantize, t, truth.shape, layout)
    if problem:
        return verdict(False, "", problem)
    ok = torch.allclose(got, truth, rtol=1e-3, atol=1e-6)
    in_order = not ok and torch.allclose(got, weight(list(range(8))), rtol=1e-3, atol=1e-6)
    return verdict(
        ok,
        say(
            en="unpacked in AWQ's interleaved order, zero points per group, scaled.",
            zh="按 AWQ 的交错顺序解包，每个分组一个零点，再乘以缩放因子。",
        ),
        say(
            en="the values are right but in the wrong columns: AWQ interleaves the eight outputs "
            "of a word (section 2).",
            zh="数值对了，列却放错了：AWQ 把一个字里的八个输出交错存放（第 2 节）。",
        )
        if in_order
        else say(
            en="unpack along the outputs in AWQ's order, take each input's group "
            "(input // group_size), then scale x (q - zero); AWQ's zero points are stored as they "
            "are, with no +1.",
            zh="按 AWQ 的顺序沿输出方向解包，找出每个输入所在的分组（input // group_size），"
            "再算 scale x (q - zero)；AWQ 的零点按原值存储，不用加 1。",
        ),
    )


def check_3(fold) -> bool:
    """Exercise 3: `fold(w, s)` -> the new weight of a Gemma RMSNorm (output x (1 + w)) divided by
    scales s."""
    import torch

    generator = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=generator) * 0.5
    s = torch.rand(64, generator=generator) * 3 + 0.2
    x = torch.randn(5, 64, generator=generator)
    new_w, error = attempt(fold, w.clone(), s.clone())
    if error:
        return verdict(False, "", error)
    new_w = torch.as_tensor(new_w).float()
    ok = new_w.shape == w.shape and torch.allclose(
        x * (1 + new_w), x * (1 + w) / s, rtol=1e-4, atol=1e-5
    )
    llama_fold = new_w.shape == w.shape and torch.allclose(new_w, w / s, rtol=1e-4, atol=1e-6)
    return verdict(
        ok,
        say(
            en="the norm's output is now divided by s, so the next linears may be multiplied by "
            "it.",
            zh="norm 的输出现在除以了 s，所以后面的线性层可以乘上它。",
        ),
        say(
            en="w / s is the fold for a norm that multiplies by w (Llama's); "
            "Gemma's multiplies by (1 + w).",
            zh="w / s 是乘以 w 的 norm（Llama 的）的折叠方式；Gemma 的 norm 乘的是 (1 + w)。",
        )
        if llama_fold
        else say(
            en="solve (1 + w') = (1 + w) / s for w'.",
            zh="由 (1 + w') = (1 + w) / s 解出 w'。",
        ),
    )
