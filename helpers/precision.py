"""Which float type to compute in on this machine: one rule for the whole course.

    print(compute_dtype("cpu", "batch"))   # calibration, perplexity, long prompts
    print(compute_dtype("cpu", "decode"))  # generating one token at a time (chat, completion)
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
| CPU with native bf16 | bfloat16 | bfloat16 |
| other CPU | float32 | bfloat16 |

Measured by `python tools/cpu_dtype_bench.py` (README, "Speed on your CPU"); `--both` also runs it
under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`, which makes a
native-bf16 CPU compute (and `cpu_bf16()` report) like an AVX2-only one. Checkpoints on disk stay bf16.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from .env import cpu_flags

WORKS = ("batch", "decode")


@dataclass(frozen=True)
class DtypeChoice:
    """A dtype name ('float32', 'bfloat16', 'float16') and the one-line reason it was chosen."""

    dtype: str
    reason: str

    def __str__(self) -> str:
        return f"{self.dtype} ({self.reason})"


def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU?, what was found).

    Asks oneDNN, which runs torch's bf16 matrix products on the CPU (and honours ONEDNN_MAX_CPU_ISA).
    oneDNN also says yes on AVX-512 CPUs without bf16 instructions, where it converts in software,
    so on x86 the CPU must list avx512_bf16 or amx_bf16 as well."""
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


def compute_dtype(device: str = "cpu", work: str = "decode") -> DtypeChoice:
    """The dtype to compute in on `device` ("cpu", "cuda", "cuda:N", "mps") for `work` ("batch" or "decode")."""
    if work not in WORKS:
        raise ValueError(
            f"work={work!r}: use 'batch' (many rows at once: calibration, perplexity, long "
            "prompts) or 'decode' (one token at a time)"
        )
    device = str(device)
    if device.startswith("cuda"):
        import torch

        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if major < 8:
            return DtypeChoice(
                "float16",
                f"GPU sm_{major}{minor} predates Ampere: no fast bf16, and GPTQ "
                "Marlin needs fp16 there",
            )
        return DtypeChoice("bfloat16", f"GPU sm_{major}{minor}: native bf16")
    if device == "mps":
        return DtypeChoice("float16", "Apple GPU: fp16 is its native half type")
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
