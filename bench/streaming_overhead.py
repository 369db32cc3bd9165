"""What does streaming cost? Tokens/s of bare generation, console streaming and the widget, in one
run.

    # course GGUF (llama.cpp) + course hf (Transformers)
    python -m bench.streaming_overhead
    python -m bench.streaming_overhead --formats gguf --tokens 128 --rounds 5
    # run inside a real Jupyter kernel (widget comm over ZMQ)
    python -m bench.streaming_overhead --in-kernel

Same prompt, greedy, same token budget for every way, each run in a fresh thread. Rounds interleave
the three ways in rotating order, after one warm-up, so a busy machine slows them alike; the fastest
run of each way (and the median) is compared with bare generation. Console output goes to os.devnull
(the terminal's drawing is not ours to count); the widget runs in widget mode even without a front
end, so every value update is made. It prints ratios and asserts nothing: timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from course import models as course_models
from helpers import env, generation, loading, streaming

PROMPT = "The history of the printing press begins"
WAYS = ("bare", "console", "widget")


def run_bare(lm, prompt: str, max_new_tokens: int) -> dict:
    """Plain generation, nothing streamed: the baseline."""
    backend = generation.backend_of(lm)
    started = time.perf_counter()
    # the prompt as the library tokenizes a text (<bos> first, its markers as tokens), greedy;
    # every generated token counted, an end-of-sequence token included, as streaming counts them
    _text, new = backend.complete(backend.encode(prompt, add_bos=True), max_new_tokens)
    return {"new_tokens": int(new), "seconds": time.perf_counter() - started}


def run_console(lm, prompt: str, max_new_tokens: int) -> dict:
    with open(os.devnull, "w") as sink:
        result = streaming.print_stream(
            streaming.TokenStream(lm, prompt, max_new_tokens), file=sink
        )
    return {"new_tokens": result.new_tokens, "seconds": result.seconds}


def run_widget(lm, prompt: str, max_new_tokens: int, refresh_s: float = 0.1) -> dict:
    sw = streaming.StreamWidget(
        lm, max_new_tokens=max_new_tokens, mode="widget", refresh_s=refresh_s
    )
    result = sw.start(prompt).wait()
    return {
        "new_tokens": result.new_tokens,
        "seconds": result.seconds,
        "update_seconds": sw.update_seconds,
    }


RUNNERS = {"bare": run_bare, "console": run_console, "widget": run_widget}


def in_thread(fn, *args):
    """fn(*args) in a fresh thread, its result (or exception) handed back.

    Every way runs off the main thread, as the widget's generation does: on a busy machine an
    OpenMP team started from the main thread spin-waits and can run several times slower than
    one started from another thread (OMP_WAIT_POLICY=PASSIVE removes the difference), which
    would swamp the cost of streaming.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def measure(
    lm, prompt: str = PROMPT, max_new_tokens: int = 128, rounds: int = 3, refresh_s: float = 0.1
) -> list[dict]:
    """One warm-up, then `rounds` rounds of the three ways in rotating order; one row per run."""
    in_thread(run_bare, lm, prompt, 8)
    rows = []
    for r in range(rounds):
        for way in WAYS[r % 3 :] + WAYS[: r % 3]:
            extra = (refresh_s,) if way == "widget" else ()
            row = in_thread(RUNNERS[way], lm, prompt, max_new_tokens, *extra)
            row.update(way=way, round=r, tokens_per_s=row["new_tokens"] / row["seconds"])
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per way: fastest and median tokens/s, and their ratios to bare generation (1.00 = no cost).

    The fastest run is the steadier estimate on a shared machine (noise only ever slows a run down).
    For the widget, also the share of its run time the reader spent updating widget values.
    """
    best = {w: max(r["tokens_per_s"] for r in rows if r["way"] == w) for w in WAYS}
    median = {w: statistics.median(r["tokens_per_s"] for r in rows if r["way"] == w) for w in WAYS}
    widget = [r for r in rows if r["way"] == "widget"]
    share = sum(r["update_seconds"] for r in widget) / sum(r["seconds"] for r in widget)
    return [
        {
            "way": w,
            "best tokens/s": best[w],
            "median tokens/s": median[w],
            "best vs bare": best[w] / best["bare"],
            "median vs bare": median[w] / median["bare"],
            "widget updates, share of time": share if w == "widget" else None,
        }
        for w in WAYS
    ]


def report(fmt: str, lm, rows: list[dict], out=sys.stdout) -> None:
    summary = {s["way"]: s for s in summarize(rows)}
    tokens = sorted({r["new_tokens"] for r in rows})
    print(
        f"\n{fmt} ({lm.backend}, {lm.dtype}): {len(rows) // 3} rounds, new tokens per run {tokens}",
        file=out,
    )
    for way, s in summary.items():
        print(
            f"  {way:8} best {s['best tokens/s']:7.2f} tokens/s ({s['best vs bare']:.3f} x bare)   "
            f"median {s['median tokens/s']:7.2f} ({s['median vs bare']:.3f} x bare)",
            file=out,
        )
    w = summary["widget"]
    print(
        f"  widget overhead ratio (best widget / best bare): {w['best vs bare']:.3f}; "
        "the reader spent "
        f"{w['widget updates, share of time']:.2%} of the widget runs updating widget values",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--formats", nargs="+", default=["gguf", "hf"], choices=course_models.FORMATS
    )
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument(
        "--refresh",
        type=float,
        default=0.1,
        help="the widget's refresh_s: redraw at most this often (0: after every piece)",
    )
    parser.add_argument(
        "--in-kernel",
        action="store_true",
        help="run the measurement inside a Jupyter kernel, as a notebook would",
    )
    args = parser.parse_args(argv)
    if args.in_kernel:
        return run_in_kernel(
            [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--in-kernel"]
        )
    course_models.ensure(args.formats, quiet=True)
    print(
        f"prompt {args.prompt!r}, {args.tokens} new tokens, {env.default_threads()} threads, "
        f"widget refresh_s={args.refresh}"
    )
    for fmt in args.formats:
        lm = loading.load_model(course_models.model_path(fmt))
        report(fmt, lm, measure(lm, args.prompt, args.tokens, args.rounds, args.refresh))
        del lm
    return 0


def run_in_kernel(argv: list[str]) -> int:
    """Run main(argv) inside a fresh ipykernel and relay its output (widget values then travel over
    ZMQ)."""
    from pathlib import Path

    from jupyter_client.manager import start_new_kernel

    root = Path(__file__).resolve().parent.parent
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(root))
    try:
        code = f"from bench.streaming_overhead import main\nmain({argv!r})"
        reply = kc.execute_interactive(
            code, timeout=None, allow_stdin=False, output_hook=lambda msg: _relay(msg)
        )
        return 0 if reply["content"]["status"] == "ok" else 1
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _relay(msg: dict) -> None:
    kind, content = msg["header"]["msg_type"], msg["content"]
    if kind == "stream":
        print(
            content["text"], end="", file=sys.stderr if content["name"] == "stderr" else sys.stdout
        )
    elif kind == "error":
        print("\n".join(content["traceback"]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
