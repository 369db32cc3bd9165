"""Exercises of notebook 03b (compressed-tensors)."""

from __future__ import annotations

from . import attempt, close, say, verdict

LAYER = "model.layers.0.mlp.down_proj"


def _shape(path=None) -> tuple[int, int]:
    from safetensors import safe_open

    from course import models as course_models

    folder = path or course_models.model_path("hf")
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if f"{LAYER}.weight" in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                out_features, in_features = f.get_slice(f"{LAYER}.weight").get_shape()
                return out_features, in_features
    raise FileNotFoundError(f"{LAYER}.weight is not in {folder}")


def check_1(answer_bytes, group_size: int = 128, path=None) -> bool:
    """Exercise 1: bytes of `LAYER` in a symmetric W4A16 compressed-tensors checkpoint:
    weight_packed (int32), weight_scale (bf16, one per group and output) and weight_shape (two
    int64)."""
    out_features, in_features = _shape(path)
    truth = out_features * in_features // 2 + out_features * (in_features // group_size) * 2 + 2 * 8
    return verdict(
        close(answer_bytes, truth, 0.001),
        say(
            en="the same bits as GPTQ's codes and scales, without zero points (symmetric) or "
            "g_idx.",
            zh="和 GPTQ 的编码与缩放因子位数相同，只是没有零点（对称量化），也没有 g_idx。",
        ),
        say(
            en="three tensors: 4 bits per weight packed into int32, a bf16 scale per group of "
            "inputs and per output, and the two numbers of the original shape as int64. "
            "Symmetric: no zero points.",
            zh="三个张量：每个权重 4 位、打包进 int32；每个输出、每组输入一个 bf16 缩放因子；"
            "以及用两个 int64 记录的原始形状。对称量化：没有零点。",
        ),
    )


def check_2(loader_for) -> bool:
    """Exercise 2: `loader_for(config)` -> "gptq", "awq", "compressed-tensors" or "hf" from a
    config.json dict, as `helpers.loading.detect_format` decides for a folder."""
    import json
    import tempfile
    from pathlib import Path

    from helpers import loading

    configs = [
        {"model_type": "gemma3_text"},
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        {"quantization_config": {"quant_method": "awq", "version": "gemm"}},
        {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}},
        {"quantization_config": {"quant_method": "GPTQ"}},
        {"quantization_config": {}},
    ]
    for config in configs:
        folder = Path(tempfile.mkdtemp(prefix="qllm-ex03b-"))
        (folder / "config.json").write_text(json.dumps(config))
        want = loading.detect_format(folder)
        got, error = attempt(loader_for, json.loads(json.dumps(config)))
        if error or got != want:
            return verdict(
                False,
                "",
                error
                or say(
                    en=f"wrong for {config}: read quantization_config.quant_method, "
                    "lower-case; no method means a plain Transformers model.",
                    zh=f"{config} 判断错了：读取 quantization_config.quant_method，转成小写；"
                    "没有方法就是普通的 Transformers 模型。",
                ),
            )
    return verdict(
        True,
        say(
            en="one field of config.json decides which library loads a folder.",
            zh="config.json 里的一个字段决定了由哪个库来加载这个文件夹。",
        ),
        "",
    )


def _weight(name: str, path=None):
    from safetensors import safe_open

    from course import models as course_models

    folder = path or course_models.model_path("hf")
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if name in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                return f.get_tensor(name).float()
    raise FileNotFoundError(f"{name} is not in {folder}")


def check_3(rtn_scales, path=None) -> bool:
    """Exercise 3: `rtn_scales(weight, group_size)` -> the scales section 1's round to nearest
    gives a float weight [out, in] in a symmetric 4-bit grid: one per output and group of
    `group_size` inputs, [out, in // group_size], as compressed-tensors' calculate_qparams
    computes them. Tried on two of the `hf` model's layers and two group sizes."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams

    for name, group_size in [
        (LAYER + ".weight", 128),
        (LAYER + ".weight", 32),
        ("model.layers.0.self_attn.q_proj.weight", 128),
    ]:
        weight = _weight(name, path)
        args = QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size
        )
        groups = weight.reshape(weight.shape[0], -1, group_size)
        truth, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
        truth = truth.reshape(weight.shape[0], -1)
        got, error = attempt(rtn_scales, weight.clone(), group_size)
        if error:
            return verdict(
                False,
                "",
                say(
                    en=f"{error} (group size {group_size})", zh=f"{error}（分组大小 {group_size}）"
                ),
            )
        got = torch.as_tensor(got).float()
        layer = name.removeprefix("model.").removesuffix(".weight")
        where = say(en=f"{layer}, group size {group_size}", zh=f"{layer}，分组大小 {group_size}")
        if got.shape != truth.shape:
            return verdict(
                False,
                "",
                say(
                    en=f"your scales have the shape {tuple(got.shape)} for {where}; expected one "
                    f"per output and group of inputs, {tuple(truth.shape)}.",
                    zh=f"对于 {where}，你的缩放因子形状是 {tuple(got.shape)}；应为每个输出、"
                    f"每组输入一个，即 {tuple(truth.shape)}。",
                ),
            )
        near = torch.isclose(got, truth, rtol=5e-3, atol=0)  # bf16 scales pass too
        if near.all():
            continue
        ratio = (got / truth).flatten()
        negative_peak = -groups.amin(-1) > groups.amax(-1)  # the group's largest |w| is negative
        if (ratio.max() - ratio.min()) < 1e-3 * ratio.abs().mean():
            hint = say(
                en=f"your scales are all off by the same factor ({where}): how many steps wide is "
                "the signed 4-bit grid, from -8 to 7, and how much of it does a symmetric scale "
                "give to each side of zero?",
                zh=f"你的缩放因子全都差了同一个倍数（{where}）：从 -8 到 7 的有符号 4 位网格"
                "有多少步宽？对称的缩放因子在零的两边各分到多少？",
            )
        elif bool((near | negative_peak).all()):
            hint = say(
                en=f"wrong for the groups whose largest weight is negative ({where}): the scale "
                "must cover the largest magnitude, on either side of zero.",
                zh=f"最大权重为负数的那些分组算错了（{where}）：缩放因子必须覆盖绝对值最大的"
                "那个权重，不管它在零的哪一边。",
            )
        else:
            hint = say(
                en=f"wrong for {where}: one scale per output row and per group of group_size "
                "consecutive inputs, set by the group's largest weight so that it lands on the "
                "edge of the 4-bit grid (section 1's calculate_qparams; symmetric: no zero point).",
                zh=f"{where} 算错了：每个输出行、每组 group_size 个连续输入各一个缩放因子，"
                "由该组最大的权重决定，使它正好落在 4 位网格的边缘（第 1 节的 "
                "calculate_qparams；对称量化：没有零点）。",
            )
        return verdict(False, "", hint)
    return verdict(
        True,
        say(
            en="each group's largest magnitude sets its scale, so one outlier coarsens the grid "
            "of its whole group: what GPTQ and AWQ improve on.",
            zh="每个分组的缩放因子由其中绝对值最大的权重决定，所以一个离群值就会让整组的网格"
            "变粗：这正是 GPTQ 和 AWQ 要改进的地方。",
        ),
        "",
    )
