"""Measure bf16 against fp32 on this CPU: the numbers behind `helpers.precision`'s rule.

    python -m bench.cpu_dtype                  # this CPU as it is
    # a native-bf16 CPU made to compute like an AVX2 one
    python -m bench.cpu_dtype --emulate-avx2
    # both, side by side (docs/cpu-precision.md)
    python -m bench.cpu_dtype --both --out build/cpu_dtype.json

Two parts, each timed in bf16 and in fp32 with the same thread count:
1. `torch.nn.functional.linear` against an 8192x640 weight on 1 thread, for 1, 8, 64 and 256 rows at
   once: from one decoded token to one calibration block.
2. The course's `hf` model (Gemma 3 270M): decode tok/s after a short prompt, prompt tok/s of a
   ~300-token prompt (both by `helpers.timing.time_generation`, the course's one definition), and
   one perplexity pass over the held-out text (`helpers.quality`).

The emulation sets ATEN_CPU_CAPABILITY=avx2 (torch's own kernels), ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN,
which otherwise runs bf16 on AMX/AVX512_BF16) and MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL, which runs fp32
products). Part 1 shows whether it reproduces the slow bf16 path:
on a real AVX2-only CPU, bf16 / fp32 time was 0.55 / 1.54 / 3.32 / 5.58 for 1 / 8 / 64 / 256 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from helpers.procs import child_command

EMULATE_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
ROWS = (1, 8, 64, 256)


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call packing, page faults
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def linear_ratios() -> dict:
    """bf16 time / fp32 time of F.linear against an 8192x640 weight, 1 thread, per row count."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight = torch.randn(8192, 640)
    out = {}
    for rows in ROWS:
        x = torch.randn(rows, 640)
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            w, xx = weight.to(dtype), x.to(dtype)
            repeats = max(5, 400 // rows)
            with torch.inference_mode():
                seconds[str(dtype).replace("torch.", "")] = _best_time(
                    lambda xx=xx, w=w: torch.nn.functional.linear(xx, w), repeats
                )
        out[rows] = {
            "fp32_ms": seconds["float32"] * 1e3,
            "bf16_ms": seconds["bfloat16"] * 1e3,
            "bf16_over_fp32": seconds["bfloat16"] / seconds["float32"],
        }
    return out


def model_timings(threads: int, new_tokens: int = 32) -> dict:
    """Decode, long-prompt and perplexity timings of the course hf model in bf16 and in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course import models as course_models
    from helpers import quality, timing
    from helpers.loading import LoadedModel

    path = course_models.model_path("hf")
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(path)
    long_prompt = tokenizer.decode(tokenizer(quality.heldout_text())["input_ids"][1:301])
    heldout_ids = tokenizer(quality.heldout_text())["input_ids"]
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        lm = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            format="hf",
            backend="transformers",
            path=path,
            device="cpu",
            dtype=dtype,
            load_seconds=0.0,
            context_length=32768,
        )
        timing.time_generation(lm, "Warm-up.", 4)
        short = [
            timing.time_generation(lm, "The history of the printing press begins", new_tokens)
            for _ in range(3)
        ]
        long = [timing.time_generation(lm, long_prompt, 2) for _ in range(2)]
        ppl_s = _best_time(lambda m=model: quality.transformers_logits(m, heldout_ids), 2)
        out[dtype] = {
            "decode_tok_s": statistics.median(r.decode_tok_s for r in short),
            "long_prompt_tokens": long[0].prompt_tokens,
            "long_prompt_tok_s": statistics.median(r.prompt_tok_s for r in long),
            "perplexity_pass_s": ppl_s,
            "heldout_tokens": len(heldout_ids),
        }
        del model, lm
    ratio = lambda key: out["bfloat16"][key] / out["float32"][key]  # noqa: E731
    out["bf16_vs_fp32"] = {
        "decode_speed": ratio("decode_tok_s"),
        "long_prompt_speed": ratio("long_prompt_tok_s"),
        "perplexity_time": ratio("perplexity_pass_s"),
    }
    return out


def run(threads: int, skip_model: bool) -> dict:
    import torch

    from helpers import precision

    native, found = precision.cpu_bf16()
    result = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native,
        "found": found,
        "emulated_avx2": all(os.environ.get(k) == v for k, v in EMULATE_AVX2.items()),
        "threads": threads,
        "linear_1_thread": linear_ratios(),
        "rule": {w: str(precision.compute_dtype("cpu", w)) for w in precision.WORKS},
    }
    if not skip_model:
        result["course_model"] = model_timings(threads)
    return result


def print_result(name: str, r: dict) -> None:
    print(
        f"\n== {name}: torch capability {r['cpu_capability']}, "
        f"native bf16: {r['native_bf16']} ({r['found']})"
    )
    print(
        "F.linear, 8192x640 weight, 1 thread:  rows "
        + "  ".join(f"{k:>6}" for k in r["linear_1_thread"])
    )
    print(
        "                        bf16 / fp32 time:      "
        + "  ".join(f"{v['bf16_over_fp32']:6.2f}" for v in r["linear_1_thread"].values())
    )
    m = r.get("course_model")
    if m:
        print(f"course hf model, {r['threads']} threads:        fp32      bf16   bf16/fp32")
        for key, label in (
            ("decode_tok_s", "decode tok/s"),
            ("long_prompt_tok_s", f"prompt tok/s ({m['float32']['long_prompt_tokens']} tokens)"),
            ("perplexity_pass_s", f"perplexity pass s ({m['float32']['heldout_tokens']} tok)"),
        ):
            f, b = m["float32"][key], m["bfloat16"][key]
            print(f"  {label:34} {f:8.2f}  {b:8.2f}  {b / f:6.2f}")
    for work, choice in r["rule"].items():
        print(f"rule, {work:6}: {choice}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--emulate-avx2", action="store_true", help="compute bf16 as an AVX2-only CPU does"
    )
    parser.add_argument(
        "--both", action="store_true", help="this CPU, then the AVX2 emulation (two processes)"
    )
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("QLLM_THREADS") or os.cpu_count() or 1)
    )
    parser.add_argument(
        "--skip-model", action="store_true", help="only the F.linear part (no course model needed)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--json-stdout", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.both or (
        args.emulate_avx2 and not all(os.environ.get(k) == v for k, v in EMULATE_AVX2.items())
    ):
        # the variables must be set before torch starts: run a child process
        modes = (
            {"this CPU": {}, "AVX2 emulation": EMULATE_AVX2}
            if args.both
            else {"AVX2 emulation": EMULATE_AVX2}
        )
        results = {}
        for name, extra in modes.items():
            options = ["--json-stdout", "--threads", str(args.threads)]
            options += ["--skip-model"] if args.skip_model else []
            cmd, env = child_command("bench.cpu_dtype", *options, env={**os.environ, **extra})
            child = subprocess.run(cmd, env=env, capture_output=True, text=True)  # dies with us
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                return child.returncode
            results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    else:
        results = {
            "emulated AVX2" if args.emulate_avx2 else "this CPU": run(args.threads, args.skip_model)
        }
        if args.json_stdout:
            print(json.dumps(next(iter(results.values()))))
            return 0
    for name, r in results.items():
        print_result(name, r)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, indent=2
            )
        )
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
