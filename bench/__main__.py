"""python -m bench: every model format on the same prompts, one JSON of speed, memory and quality.

    python -m bench --formats gguf,gptq,awq,hf-bf16,hf-fp32,gguf-transformers --out results.json
    python -m bench --formats gguf,hf-bf16 --new-tokens 8 --repeats 1 --no-quality   # a quick look
    python -m bench --device cuda --out build/bench-cuda.json                         # on a GPU
    python -m bench --formats gguf --gguf-types ~/.cache/quantized-llms-locally/gguf-types \
        --no-quality

Prints the table, each format's ratios against llama.cpp GGUF, and its predicted decode speed
against the measured one, all from this run.
"""

from __future__ import annotations

import argparse
import sys

from helpers.errors import CourseError

from .compare import DEFAULT_PROMPTS, FORMATS, print_report, run_benchmark


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"comma-separated, from: {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument("--out", help="write the results here (JSON)")
    parser.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        help="a prompt (repeat for several; default: one English, one Chinese)",
    )
    parser.add_argument(
        "--new-tokens", type=int, default=32, help="tokens generated per run (default 32)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed short runs (8 new tokens) per format first (default 1)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds over all prompts (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: $QLLM_THREADS or all cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--no-quality", action="store_true", help="skip perplexity and top-1 agreement"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="FORMAT=PATH",
        help="use this model file/folder/hub id for a format instead of the course model",
    )
    parser.add_argument(
        "--long-prompt", help="also time reading this (long) prompt, see --long-prompt-formats"
    )
    parser.add_argument(
        "--long-prompt-formats",
        default="hf-bf16,hf-fp32",
        help="formats timed on --long-prompt (default: hf-bf16,hf-fp32)",
    )
    parser.add_argument(
        "--gguf-types",
        metavar="DIR",
        help="also time every *.gguf in DIR with llama.cpp, as formats gguf-<TYPE> (no quality)",
    )
    parser.add_argument("--progress", choices=("bar", "lines", "none"), default="bar")
    args = parser.parse_args(argv)
    try:
        sources = {}
        for item in args.source:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise CourseError(
                    f"--source {item!r}: write FORMAT=PATH, e.g. --source gguf=/models/x.gguf"
                )
            sources[name] = path
        report = run_benchmark(
            formats=args.formats,
            prompts=args.prompts or DEFAULT_PROMPTS,
            new_tokens=args.new_tokens,
            warmup=args.warmup,
            repeats=args.repeats,
            threads=args.threads,
            device=args.device,
            quality=not args.no_quality,
            sources=sources,
            out=args.out,
            progress=args.progress,
            long_prompt=args.long_prompt,
            long_prompt_formats=args.long_prompt_formats,
            gguf_types=args.gguf_types,
        )
    except CourseError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    print_report(report)
    if args.out:
        print(f"\nresults written to {args.out}")
    return 1 if any(r.get("error") for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
