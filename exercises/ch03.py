"""Exercises of notebook 03 (AWQ), checked on layer 0's `mlp.down_proj` of the course's AWQ and GPTQ
models."""

from __future__ import annotations

from . import attempt, learner_weight, verdict

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
        "the packing differs, the bytes do not: only one GPTQ tensor has no AWQ counterpart.",
        "list the tensors of both layers with their shapes and dtypes (section 2 of each "
        "notebook); qweight, qzeros and scales hold the same number of bits in both formats.",
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
    got, problem = learner_weight(dequantize, t, truth.shape, "AWQ packs 8 outputs per int32")
    if problem:
        return verdict(False, "", problem)
    ok = torch.allclose(got, truth, rtol=1e-3, atol=1e-6)
    in_order = not ok and torch.allclose(got, weight(list(range(8))), rtol=1e-3, atol=1e-6)
    return verdict(
        ok,
        "unpacked in AWQ's interleaved order, zero points per group, scaled.",
        "the values are right but in the wrong columns: AWQ interleaves the eight outputs of a "
        "word (section 2)."
        if in_order
        else "unpack along the outputs in AWQ's order, take each input's group "
        "(input // group_size), then scale x (q - zero); AWQ's zero points are stored as they are, "
        "with no +1.",
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
        "the norm's output is now divided by s, so the next linears may be multiplied by it.",
        "w / s is the fold for a norm that multiplies by w (Llama's); "
        "Gemma's multiplies by (1 + w)."
        if llama_fold
        else "solve (1 + w') = (1 + w) / s for w'.",
    )
