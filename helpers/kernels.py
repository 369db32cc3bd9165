"""The 4-bit backends behind Transformers: are they installed, and which kernel runs the quantized
layers?

# MissingBackendError that says what to install, before Transformers is asked
require_backend("gptq")
report = kernel_report(lm)     # a LoadedModel (Transformers backend) or the model itself
pick_backend("gptq", "cuda", "bfloat16", overflows=True)  # a Gemma on a T4: the PyTorch kernel
print_kernel_report(report)    # a few lines; a slow fallback or offloading loud and last
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from collections import Counter

from .errors import CourseError, MissingBackendError

# What Transformers 5 needs besides itself to load each format (see its quantizers/quantizer_*.py).
BACKEND_PACKAGES = {
    "gptq": ("gptqmodel", "optimum"),
    "awq": ("gptqmodel", "accelerate"),
    "compressed-tensors": ("compressed_tensors",),
}


def require_backend(fmt: str) -> None:
    """Fail early and clearly if a package the format needs is missing (or GPTQModel does not
    import); Transformers' own error would not say what to install."""
    # import-time chatter that is not about the learner's model: torchao's optional CUDA extensions
    # on a CPU machine, torch's pytree notice about GPTQModel's enums (once per import, harmless)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    missing = [
        name for name in BACKEND_PACKAGES.get(fmt, ()) if importlib.util.find_spec(name) is None
    ]
    if missing and fmt == "compressed-tensors":
        raise MissingBackendError(
            "This is a compressed-tensors checkpoint (llm-compressor's format); Transformers reads "
            "it with the compressed-tensors package, which is not installed. Install it: `pip "
            "install 'quantized-llms-locally[quant]'` or `pip install compressed-tensors==0.20.1`, "
            "then restart the kernel."
        )
    if missing:
        raise MissingBackendError(
            f"This is a {fmt.upper()} checkpoint; Transformers 5 loads {fmt.upper()} through "
            f"GPTQModel (+ {BACKEND_PACKAGES[fmt][1]}), and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (Transformers would fail with a "
            "confusing error such as NameError: name 'QuantizeConfig' is not defined). Install "
            "them: `pip install 'quantized-llms-locally[quant]'` or `pip install gptqmodel==7.6.0 "
            "optimum==2.3.0 accelerate`, then restart the kernel. (AutoGPTQ and AutoAWQ, which "
            "older tutorials use, no longer work with Transformers 5.)"
        )
    if fmt not in ("gptq", "awq"):
        return
    try:
        import_gptqmodel_quietly()
    # installed but broken (e.g. built for another torch): say so, not a traceback
    except ImportError as err:
        raise MissingBackendError(
            f"This is a {fmt.upper()} checkpoint, which loads through GPTQModel; gptqmodel is "
            f"installed but fails to import ({type(err).__name__}: {str(err)[:200]}). It usually "
            "means it was built for another torch version: reinstall it with `pip install "
            "--force-reinstall gptqmodel==7.6.0` (the course pins it), then restart the kernel."
        ) from None


def import_gptqmodel_quietly():
    """Import GPTQModel without its banner and INFO chatter (warnings still show)."""
    # one harmless notice per import
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel
    logging.getLogger("logbar").setLevel(logging.WARNING)
    return gptqmodel


# GPTQModel's pure-PyTorch kernels, by format: slower than Marlin, but they compute in bf16 on any
# GPU
TORCH_BACKEND = {"gptq": "gptq_torch", "awq": "torch_awq"}  # as Transformers names them


def pick_backend(
    fmt: str, device: str, dtype: str | None, overflows: bool
) -> tuple[str | None, str]:
    """The GPTQModel backend to ask for, and why, for a model that `overflows` float16 or not;
    (None, "") leaves the choice to GPTQModel.

    Only for a model that overflows fp16, on a GPU, in bf16 (`helpers.memory.resolve_dtype`):
    - GPTQ before Ampere: Marlin needs fp16 on sm_75, and ExllamaV2 casts its input to fp16;
    - AWQ on any GPU: Transformers loads AWQ in fp16 there, whatever dtype is asked for
      (`helpers.loading` loads it in fp32 and casts it to bf16 instead), and AWQ's fast GPU
      kernels compute in fp16.
    GPTQModel's PyTorch kernels compute in the dtype of their input: slower, but correct."""
    if not overflows or fmt not in TORCH_BACKEND or dtype != "bfloat16":
        return None, ""
    if not str(device).startswith("cuda"):
        return None, ""
    import torch

    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if fmt == "gptq" and major >= 8:
        return None, ""  # Marlin computes in bf16 from Ampere on
    reason = (
        f"GPTQModel's PyTorch kernel, chosen: on sm_{major}{minor} the fast {fmt.upper()} kernels "
        "compute in fp16, which this model overflows, and this one computes in bf16 "
        "(slower, correct)"
    )
    return TORCH_BACKEND[fmt], reason


def classify_kernels(layers, chosen: str = "") -> dict:
    """The kernel report from (quantized-linear class name, device) pairs: a pure function, easy to
    test.

    On a CUDA device, a class with "Torch" in its name (TorchLinear, AwqTorchLinear, ...) is
    GPTQModel's pure-PyTorch fallback: it dequantizes on every call and runs many times slower
    than Marlin, Machete, ExllamaV2 or the AWQ GEMM kernels. That is today's form of the old
    AutoGPTQ trap ("CUDA extension not installed", model.device still says cuda), unless the
    course chose it on purpose (`chosen`, from `pick_backend`: it then becomes the expectation).
    Quantized layers on the CPU while others sit on a GPU mean the model was partly offloaded.
    """
    layers = [(name, str(device)) for name, device in layers]
    devices = {device for _, device in layers}
    slow = {name for name, device in layers if device.startswith("cuda") and "Torch" in name}
    on_gpu = any(d.startswith("cuda") for d in devices)
    offloaded = on_gpu and any(not d.startswith("cuda") for d in devices)
    warnings_ = []
    if slow and not chosen:
        warnings_.append(
            f"SLOW KERNEL: the model is on the GPU but {', '.join(sorted(slow))} runs its "
            "quantized layers: GPTQModel's pure-PyTorch fallback, many times slower than "
            "Marlin/ExllamaV2/AWQ GEMM, although model.device says cuda. GPTQModel compiles its "
            "CUDA kernels on first use: that needs a CUDA build of torch, the CUDA toolkit (nvcc) "
            "with `ninja`, and a Turing-or-newer GPU (sm_75+). Look above for a kernel compile "
            "error, and load in float16/bfloat16, not float32."
        )
    if offloaded:
        warnings_.append(
            "OFFLOADED: some quantized layers are on the CPU while others are on the GPU "
            "(device_map put what did not fit in GPU memory on the CPU). Every token now crosses "
            "the PCIe bus: free GPU memory or pick a smaller model."
        )
    if chosen:
        expected = chosen
    elif on_gpu:
        expected = "Marlin, Machete, ExllamaV2 or AWQ GEMM/GEMV kernels"
    elif any(d.startswith("cpu") for d in devices):
        expected = "TorchAten kernels (TorchAtenLinear / TorchAtenAwqLinear)"
    else:
        expected = "-"
    return {
        "quantized_linear": dict(Counter(name for name, _ in layers)),
        "devices": sorted(devices),
        "expected": expected,
        "slow_fallback": bool(slow) and not chosen,
        "offloaded": offloaded,
        "warning": " ".join(warnings_) or None,
    }


def _layer_device(module) -> str:
    """The device of a quantized layer's own tensors (its packed weights are buffers)."""
    for tensor in module.buffers(recurse=False):
        return str(tensor.device)
    for tensor in module.parameters(recurse=False):
        return str(tensor.device)
    return "meta"


def kernel_report(model) -> dict:
    """Which quantized-linear classes back the layers, on which device, and whether that is fast
    (see `classify_kernels`). `model` is a LoadedModel (Transformers backend) or the model itself.
    `plain_linear` counts the nn.Linear layers left unquantized (usually lm_head)."""
    decompressed = False
    chosen = ""
    torch_model = model
    # a LoadedModel: helpers.loading imports this module, not the reverse, so no isinstance here
    if not hasattr(model, "modules"):
        if not hasattr(model.model, "modules"):  # no torch module in it: llama.cpp's Llama
            raise CourseError(
                "kernel_report inspects Transformers models (GPTQ/AWQ/hf). A GGUF model runs on "
                "llama.cpp, whose kernels are compiled in: see llama_cpp.llama_print_system_info() "
                "(notebook 00)."
            )
        decompressed = model.format == "compressed-tensors"
        chosen = model.kernel_reason
        torch_model = model.model
    layers = []
    plain = 0
    for module in torch_model.modules():
        name = type(module).__name__
        is_quantized = any(cls.__name__ == "BaseQuantLinear" for cls in type(module).__mro__)
        if is_quantized:  # BaseQuantLinear: GPTQModel's base class of every 4-bit layer
            layers.append((name, _layer_device(module)))
        elif name == "Linear":
            plain += 1
    report = {**classify_kernels(layers, chosen), "plain_linear": plain}
    if decompressed:
        report["expected"] = (
            "none: compressed-tensors weights are decompressed to dense nn.Linear on load"
        )
    return report


def print_kernel_report(report: dict) -> None:
    """The kernel report as a few readable lines, the warning (if any) loud and last."""
    dense = report["expected"].startswith("none:")  # compressed-tensors, decompressed on load
    kernels = ", ".join(f"{name} x{n}" for name, n in report["quantized_linear"].items())
    no_kernels = "none (decompressed on load)" if dense else "none (not quantized)"
    print(f"quantized layers : {kernels or no_kernels}")
    print(
        f"plain nn.Linear  : {report.get('plain_linear', 0)} "
        + (
            "(all of them: 4-bit weights decompressed on load)"
            if dense
            else "(left in full precision; usually lm_head)"
        )
    )
    print(f"device(s)        : {', '.join(report['devices']) or '-'}")
    print(f"expected here    : {report['expected']}")
    if report["warning"]:
        print("\n" + "!" * 80 + "\n" + report["warning"] + "\n" + "!" * 80)
    elif dense:
        print(
            "verdict          : no 4-bit kernel here: it runs (and takes memory) like the "
            "full-precision model"
        )
    else:
        print("verdict          : OK, the expected kernel for this device")
