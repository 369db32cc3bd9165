"""GPU check for notebooks 02/03: the course's dtype rule on a GPU, then GPTQ and AWQ kernels and
speed.

    python tools/gpu_check.py                        # the course models (built if missing)
    python tools/gpu_check.py --json gpu-check.json  # also save the figures
    # the original tutorial's repos:
    python tools/gpu_check.py --gptq neuralmagic/Mistral-7B-Instruct-v0.3-GPTQ-4bit \\
                              --awq solidrust/Mistral-7B-Instruct-v0.3-AWQ

First, numerics: the full-precision, GPTQ and AWQ models are loaded with `load_model(dtype="auto")`,
in the dtype `helpers.precision`'s rule picks for this GPU, and each must give finite logits and a
continuation with words in it. Gemma models overflow float16 (NaN, then only `<pad>`): this is the
check that the rule and the load guard keep them out of it on this GPU. Any failure: exit 1.

Then each 4-bit checkpoint is loaded twice: with the kernel GPTQModel picks (it should be Marlin,
Machete, ExllamaV2 or an AWQ GEMM kernel, unless the course chose GPTQModel's PyTorch kernel and
the kernel report says why), and forced onto GPTQModel's pure-PyTorch kernel, the slow fallback a
broken install lands on. The decode-speed ratio between the two is what the old "CUDA extension
not installed" trap costs on this GPU. Decode speed is `helpers.timing.measure`'s, the course's
one definition (a warm-up, then the median of 3 runs).

On a machine without a CUDA GPU it says so and exits 0: nothing is measured, nothing is invented.
`--device cpu` runs the same code on the CPU to test the script itself (its figures are CPU
figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "The capital of France is"
# GPTQModel's pure-PyTorch kernels, forced through the quantization config's `backend`
FALLBACK_BACKEND = {"gptq": "gptq_torch", "awq": "torch_awq"}


def _peak_gib(device: str):
    import torch

    return (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None
    )


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def decode_speed(lm, new_tokens: int) -> dict:
    """Decode speed by the course's one definition (helpers.timing, as notebooks 04 and 08 report
    it): a warm-up (kernel compilation, autotuning, allocator), then the median of 3 timed runs."""
    from helpers import timing

    t = timing.measure(lm, PROMPT, new_tokens=new_tokens, warmup=1, repeats=3)
    return {
        "decode_tok_s": round(t.median("decode_tok_s"), 1),
        "ttft_s": round(t.median("ttft_s"), 4),
        "new_tokens": new_tokens,
    }


def numerics(fmt: str, source: str, device: str) -> dict:
    """Load with the course's rule (dtype="auto") and check the model computes: finite logits for
    a short text, and 16 greedy tokens that hold words, not padding."""
    import torch

    from helpers import generation, loading

    lm = loading.load_model(source, device=device)
    ids = lm.tokenizer(loading.FLOAT16_CHECK_TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        finite = bool(torch.isfinite(lm.model(ids.to(lm.model.device)).logits).all())
    sample = generation.generate(lm, loading.FLOAT16_CHECK_TEXT, max_new_tokens=16)
    row = {
        "format": fmt,
        "source": str(source),
        "dtype": lm.dtype,
        "dtype_reason": lm.dtype_reason,
        "kernel_reason": lm.kernel_reason,
        "finite_logits": finite,
        "has_words": sum(ch.isalpha() for ch in sample) >= 8,
        "sample": sample,
    }
    del lm
    return row


def check_one(
    fmt: str, source: str, new_tokens: int, fallback: bool, device: str = "cuda"
) -> list[dict]:
    """Rows for one checkpoint: the kernel GPTQModel picks, then (optionally) the forced
    fallback.
    """
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

    from helpers import generation, kernels, loading

    rows = []
    _reset_peak(device)
    lm = loading.load_model(source, device=device)
    if lm.format != fmt:
        raise SystemExit(f"{source} is a {lm.format} checkpoint, expected {fmt}")
    report = kernels.kernel_report(lm)
    print(f"\n== {fmt.upper()} {source} (kernel GPTQModel picked) ==")
    kernels.print_kernel_report(report)
    speed = decode_speed(lm, new_tokens)
    rows.append(
        {
            "format": fmt,
            "source": str(source),
            "kernel": ", ".join(report["quantized_linear"]),
            "dtype": lm.dtype,
            "load_s": round(lm.load_seconds, 1),
            **speed,
            "peak_gpu_GiB": _peak_gib(device),
            "warning": report["warning"],
            "sample": generation.generate(lm, PROMPT, max_new_tokens=16),
        }
    )
    path, base = lm.path, dataclasses.replace(lm, model=None)
    del lm
    if fallback:
        # intended here
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
        config = (
            GPTQConfig(bits=4, backend=FALLBACK_BACKEND[fmt])
            if fmt == "gptq"
            else AwqConfig(bits=4, backend=FALLBACK_BACKEND[fmt])
        )
        _reset_peak(device)
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype="auto", device_map=device, quantization_config=config
        )
        load_s = time.perf_counter() - started
        report = kernels.kernel_report(model)
        print(
            f"\n== {fmt.upper()} {source} (forced backend={FALLBACK_BACKEND[fmt]!r}: the "
            "slow-fallback trap) =="
        )
        kernels.print_kernel_report(report)
        speed = decode_speed(dataclasses.replace(base, model=model), new_tokens)
        rows.append(
            {
                "format": fmt,
                "source": str(source),
                "kernel": ", ".join(report["quantized_linear"]),
                "dtype": str(model.dtype).replace("torch.", ""),
                "load_s": round(load_s, 1),
                **speed,
                "peak_gpu_GiB": _peak_gib(device),
                "warning": report["warning"],
                "sample": "",
            }
        )
        del model
        rows[-1]["slowdown_vs_picked"] = round(
            rows[0]["decode_tok_s"] / max(rows[-1]["decode_tok_s"], 1e-9), 1
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hf", help="full-precision folder or hub id (default: the course hf model)"
    )
    parser.add_argument("--gptq", help="GPTQ folder or hub id (default: the course GPTQ model)")
    parser.add_argument("--awq", help="AWQ folder or hub id (default: the course AWQ model)")
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="tokens to decode per timing run"
    )
    parser.add_argument(
        "--no-fallback", action="store_true", help="skip the forced pure-PyTorch kernel runs"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: a dry run that tests this script (CPU figures, not GPU ones)",
    )
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing measured. Run `make setup` first.")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        kind = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}"
        )
        print(
            f"No CUDA GPU is visible to torch {torch.__version__} ({kind}) on {platform.node()}. "
            "Nothing was measured: this check only means something on an NVIDIA GPU. Run it there "
            "with a CUDA build of torch and gptqmodel installed; notebooks 02 and 03 explain what "
            "to look for."
        )
        return 0

    from course import models as course_models
    from helpers.errors import CourseError
    from helpers.env import installed_version

    sources = {"hf": args.hf, "gptq": args.gptq, "awq": args.awq}
    try:
        missing = [fmt for fmt, src in sources.items() if src is None]
        if missing:
            course_models.ensure(missing)
            for fmt in missing:
                sources[fmt] = str(course_models.model_path(fmt))
        checked = [numerics(fmt, source, args.device) for fmt, source in sources.items()]
        rows = []
        for fmt in ("gptq", "awq"):
            rows += check_one(
                fmt,
                sources[fmt],
                args.new_tokens,
                fallback=not args.no_fallback,
                device=args.device,
            )
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    record = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none: CPU dry run",
        "compute_capability": (
            ".".join(map(str, torch.cuda.get_device_capability(0)))
            if args.device == "cuda"
            else "-"
        ),
        "versions": {
            name: installed_version(name)
            for name in ("torch", "transformers", "gptqmodel", "optimum")
        },
        "prompt": PROMPT,
        "numerics": checked,
        "rows": rows,
    }
    print(
        f"\n{record['date_utc']}  {record['gpu']} (compute capability "
        f"{record['compute_capability']})  "
        + "  ".join(f"{k} {v}" for k, v in record["versions"].items())
    )
    print("numerics with the course's dtype rule (load_model(dtype='auto')):")
    for r in checked:
        verdict = "OK" if r["finite_logits"] and r["has_words"] else "FAILED"
        print(f"  {r['format']:5} {r['dtype']:9} {verdict:6} {r['sample']!r}")
        print(f"        dtype: {r['dtype_reason']}")
        if r["kernel_reason"]:
            print(f"        kernel: {r['kernel_reason']}")
    print(
        f"{'format':6} {'kernel':24} {'dtype':9} {'decode tok/s':>12} {'slowdown':>9} "
        f"{'peak GiB':>9}"
    )
    for r in rows:
        slow = f"{r['slowdown_vs_picked']}x" if "slowdown_vs_picked" in r else "-"
        peak = "-" if r["peak_gpu_GiB"] is None else r["peak_gpu_GiB"]
        print(
            f"{r['format']:6} {r['kernel'][:24]:24} {r['dtype']:9} {r['decode_tok_s']:>12} "
            f"{slow:>9} {peak:>9}"
        )
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        print(f"figures written to {args.json}")
    broken = [r for r in checked if not (r["finite_logits"] and r["has_words"])]
    # the kernel GPTQModel picked by itself was a slow fallback
    picked_warnings = [r for r in rows if "slowdown_vs_picked" not in r and r["warning"]]
    return 1 if broken or picked_warnings else 0


if __name__ == "__main__":
    sys.exit(main())
