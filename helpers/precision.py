"""Which float type to compute in on this machine: one rule for the whole course.

    print(compute_dtype("cpu", "batch"))   # perplexity, long prompts
    print(compute_dtype("cpu", "decode"))  # generating one token at a time (chat, completion)
    print(compute_dtype("cpu", "calibration"))  # quantizing: float32 on every CPU
    with products_in_fp32(): ...  # a bf16 model's CPU matrix products, in float32
    # a T4: float32, since Gemma overflows fp16
    print(compute_dtype("cuda", "decode", "gemma3_text"))
    cpu_bf16()                             # (True/False, what was found)

Why it depends on the CPU. bf16 halves the bytes of every weight. Decoding one token multiplies
one row of activations by every weight matrix: the time goes into reading the weights, so bf16 is
faster everywhere. Work on many rows at once (a calibration block, a perplexity pass, a long prompt)
is arithmetic-bound instead. CPUs with native bf16 instructions (x86 AVX512_BF16 or AMX, Arm's BF16
extension) do that arithmetic fast; the others (AVX2 laptops, AMD before Zen 4) emulate it, and a
256-row bf16 product there takes several times as long as in fp32. So:

| device | many rows ("batch") | one row at a time ("decode") |
|---|---|---|
| CUDA, compute capability >= 8.0 | bfloat16 | bfloat16 |
| CUDA, older (T4 and earlier) | float16 | float16 (Marlin wants fp16 there) |
| Apple GPU (mps) | float16 | float16 |
| CPU with native bf16 | bfloat16 | bfloat16 |
| other CPU | float32 | bfloat16 |

Quantizing on a CPU ("calibration": GPTQ's Hessians, AWQ's scale search) computes in float32 on
every CPU: those sums run over thousands of rows, and builds on the two kinds of CPU then come out
close. A model that stays bf16 (GPTQModel's AWQ packs only 16-bit layers; perplexity of a bf16
model) gets its products in float32 through `products_in_fp32`, the one mechanism for that.

float16 only where the model can compute in it. Its largest value is 65,504, and some architectures
(the Gemma family: `FLOAT16_OVERFLOWS`) exceed that inside their layers: in float16 they compute
inf, then NaN, and generate nothing but padding, with no error. For them the rule picks bfloat16
where the device runs it natively, else float32 (`compute_dtype(device, work, model_type)`).
`helpers.loading` also checks every float16 load with one short forward pass, for the
architectures no list names.

Measured by `python -m bench.cpu_dtype` (docs/cpu-precision.md); `--both` also runs it
under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`, which makes a
native-bf16 CPU compute (and `cpu_bf16()` report) like an AVX2-only one.
Checkpoints on disk stay bf16.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

from .env import cpu_flags

WORKS = ("batch", "decode", "calibration")
# config.json model_type names (substrings) of architectures known to overflow float16 in
# their layers
FLOAT16_OVERFLOWS = ("gemma",)


@dataclass(frozen=True)
class DtypeChoice:
    """A dtype name ('float32', 'bfloat16', 'float16') and the one-line reason it was chosen."""

    dtype: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dtype} ({self.reason})"


def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU?, what was found).

    Asks oneDNN, which runs torch's bf16 matrix products on the CPU (and honours
    ONEDNN_MAX_CPU_ISA). oneDNN also says yes on AVX-512 CPUs without bf16 instructions, where it
    converts in software, so on x86 the CPU must list avx512_bf16 or amx_bf16 as well."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        hardware = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
        native = onednn and bool(hardware)
        found = f"{capability}; CPU flags: {', '.join(hardware) or 'no avx512_bf16/amx_bf16'}"
    else:  # Arm and others: oneDNN's own check is the CPU's BF16 extension
        native = onednn
        found = f"{capability} ({machine}); oneDNN bf16: {'yes' if onednn else 'no'}"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return native, found + (f"; ONEDNN_MAX_CPU_ISA={limit}" if limit else "")


def overflows_float16(model_type: str | None) -> bool:
    """Is this architecture (config.json's model_type) known to exceed float16's range in its
    layers?
    """
    return bool(model_type) and any(name in model_type.lower() for name in FLOAT16_OVERFLOWS)


def mps_bf16() -> bool:
    """Does this Mac's GPU run bf16? (macOS 14 and later; older ones refuse bf16 tensors on mps.)"""
    import torch

    try:
        ones = torch.ones(2, 2, dtype=torch.bfloat16, device="mps")
        (ones @ ones).cpu()
    except (RuntimeError, TypeError):
        return False
    return True


def compute_dtype(
    device: str = "cpu",
    work: str = "decode",
    model_type: str | None = None,
    overflows: bool | None = None,
) -> DtypeChoice:
    """The dtype to compute in on `device` ("cpu", "cuda", "cuda:N", "mps") for `work` ("batch" or
    "decode"), for a model of architecture `model_type` (config.json's; None: any architecture).
    `overflows`: whether the model overflows float16, when known by measurement; None asks
    `overflows_float16(model_type)`."""
    if work not in WORKS:
        raise ValueError(
            f"work={work!r}: use 'batch' (many rows at once: perplexity, long prompts), "
            "'decode' (one token at a time) or 'calibration' (quantizing on a CPU)"
        )
    if overflows is None:
        overflows = overflows_float16(model_type)
    model = model_type or "this model"
    device = str(device)
    if device.startswith("cuda"):
        import torch

        major, minor = torch.cuda.get_device_capability(torch.device(device))
        gpu = f"GPU sm_{major}{minor}"
        if major >= 8:
            return DtypeChoice("bfloat16", f"{gpu}: native bf16")
        if overflows:
            return DtypeChoice(
                "float32",
                f"{gpu} predates Ampere: its fast half type is fp16, which {model} overflows "
                "(NaN, then only padding), and its bf16 is emulated",
            )
        return DtypeChoice(
            "float16",
            f"{gpu} predates Ampere: no fast bf16, and GPTQ Marlin needs fp16 there",
        )
    if device == "mps":
        if not overflows:
            return DtypeChoice("float16", "Apple GPU: fp16 is its native half type")
        if mps_bf16():
            return DtypeChoice(
                "bfloat16",
                f"Apple GPU: {model} overflows fp16 (NaN, then only padding); this Mac runs bf16",
            )
        return DtypeChoice(
            "float32",
            f"Apple GPU: {model} overflows fp16 (NaN, then only padding), and bf16 needs "
            "macOS 14 or later",
        )
    if work == "calibration":
        return DtypeChoice(
            "float32",
            "quantizing on a CPU: float32 on every CPU (GPTQ's Hessians and AWQ's search sum over "
            "thousands of rows, and builds on both kinds of CPU come out close)",
        )
    native, found = cpu_bf16()
    if native:
        return DtypeChoice("bfloat16", f"CPU with native bf16 ({found})")
    if work == "decode":
        return DtypeChoice(
            "bfloat16",
            f"no native bf16 ({found}), but decoding reads weights more than it "
            "computes, and bf16 reads half the bytes",
        )
    return DtypeChoice(
        "float32",
        f"no native bf16 ({found}): many-row bf16 products are emulated and "
        "several times slower than fp32",
    )


@contextlib.contextmanager
def products_in_fp32(min_rows: int = 1, head=None, rows: int = 32768):
    """Inside, every 16-bit nn.Linear on the CPU given at least `min_rows` rows multiplies in
    float32, and rounds its output back to its dtype (what a native bf16 product that accumulates
    in float32 returns), so a bf16 model stays a bf16 model. `head`, the output layer if given,
    keeps float32 outputs (logits) and works `rows` output rows at a time (84 MB each for Gemma's).

    The one mechanism for a bf16 model's products in float32: perplexity where bf16 is emulated
    (`helpers.quality`), and AWQ's search while quantizing (`helpers.quantize`). It patches the
    class, not the layers, because GPTQModel's AWQ copies layers while it searches. GPTQ and AWQ
    layers are not nn.Linear: untouched."""
    import torch

    original = torch.nn.Linear.forward

    def forward(self, x):
        weight = self.weight
        if (
            weight.device.type != "cpu"
            or weight.dtype not in (torch.bfloat16, torch.float16)
            or x.dtype != weight.dtype
            or x.numel() < min_rows * x.shape[-1]
        ):
            return original(self, x)
        bias = None if self.bias is None else self.bias.float()
        blocks = [
            torch.nn.functional.linear(
                x.float(),
                weight[start : start + rows].float(),
                None if bias is None else bias[start : start + rows],
            )
            for start in range(0, weight.shape[0], rows)
        ]
        out = torch.cat(blocks, dim=-1)
        return out if self is head else out.to(x.dtype)

    torch.nn.Linear.forward = forward
    try:
        yield
    finally:
        torch.nn.Linear.forward = original
