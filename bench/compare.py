"""Every format on the same prompts, on equal work, in one run: speed, memory, the bandwidth
ceiling and quality, written to one JSON file (see `python -m bench --help`).

How it is fair on a noisy machine:
- one worker process per format (bench/worker.py), loaded one after another, so each has its own
  load time and its own peak memory;
- greedy decoding of exactly `new_tokens` tokens everywhere; threads fixed;
- a short warm-up per format (first-call costs: pages faulted in, 4-bit weights repacked, are paid
  by the first forward pass), then `repeats` rounds in which the order of the formats rotates, so
  a burst of load elsewhere hits every format alike; medians and spreads are reported;
- ratios against llama.cpp GGUF (the reference) are computed from this run only, and so is each
  row's predicted decode speed (helpers.plan's rule, calibrated on one row per backend:
  `predictions`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from helpers.procs import child_command
from helpers import timing
from helpers.errors import CourseError
from helpers.env import default_threads, installed_version

from .machine import gpu_copy_bandwidth, machine_summary
from .worker import FORMATS, spec

DEFAULT_PROMPTS = ("The history of the printing press begins", "印刷术的历史可以追溯到")
SPEED_REFERENCE = "gguf"  # llama.cpp: ratios are against it
QUALITY_REFERENCE = "hf-bf16"  # full precision: top-1 agreement is against it
CALIBRATION = {
    "llama.cpp": SPEED_REFERENCE,
    "transformers": QUALITY_REFERENCE,
}  # predictions: one row per backend
WARMUP_TOKENS = 8  # a warm-up run's length: the one-off costs fall in its first forward pass


class BenchError(CourseError):
    """The benchmark was asked for something it cannot do."""


def parse_formats(text: str | list[str]) -> list[str]:
    """'gguf,gptq' -> ['gguf', 'gptq'], refusing unknown names with the list of known ones."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise BenchError(
            f"Unknown format(s) {', '.join(unknown) or '(none given)'}; choose from: "
            f"{', '.join(FORMATS)} (comma-separated, e.g. --formats gguf,hf-bf16)."
        )
    return list(dict.fromkeys(names))


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, source: str, device: str, threads: int, log_path: Path):
        # a fresh interpreter (no memory shared with us) that dies with us; one socket carries the
        # requests
        self.name, self.log_path = name, log_path
        ours, theirs = socket.socketpair()
        argv, env = child_command(
            "bench.worker", name, source, device, threads, log_path, theirs.fileno()
        )
        self.process = subprocess.Popen(
            argv, env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
        )
        theirs.close()
        self.conn = Connection(ours.detach())

    def receive(self):
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            raise BenchError(
                f"The {self.name} worker died (exit code {self.process.returncode}): "
                f"{self._log_tail()}"
            ) from None
        if status != "ok":
            raise BenchError(f"{self.name}: {payload}")
        return payload

    def ask(self, command: str, **args):
        self.conn.send((command, args))
        return self.receive()

    def close(self):
        with contextlib.suppress(OSError):
            self.conn.send(("close", {}))
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) + f"\n(full log: {self.log_path})"


def _sources(formats, sources: dict | None) -> dict[str, str]:
    """Where each format's model comes from: the course models unless overridden. A source given
    for one format serves the formats that share its files (hf-bf16/hf-fp32,
    gguf/gguf-transformers)."""
    from course import models as course_models

    sources = dict(sources or {})
    unknown = [name for name in sources if name not in FORMATS]
    if unknown:
        raise BenchError(
            f"--source for unknown format(s) {', '.join(unknown)}; formats: {', '.join(FORMATS)}."
        )
    by_files = {FORMATS[name][0]: source for name, source in sources.items()}
    chosen = {f: sources.get(f) or by_files.get(FORMATS[f][0]) for f in formats}
    course = sorted({FORMATS[f][0] for f, source in chosen.items() if not source})
    if course:
        course_models.ensure(course, quiet=True)
    return {
        f: str(source or course_models.model_path(FORMATS[f][0])) for f, source in chosen.items()
    }


def check_one_model(sources: dict[str, str]) -> None:
    """Perplexity and top-1 agreement compare formats of one model: refuse sources that are not
    (another vocabulary, layer count or hidden size), saying which differ."""
    from helpers.model_info import model_shape

    shapes = {name: model_shape(source) for name, source in sources.items()}
    if len({tuple(shape.values()) for shape in shapes.values()}) > 1:
        described = "; ".join(
            f"{name}: {_thousands(shape['vocabulary'])} tokens, {shape['layers']} layers, "
            f"hidden {shape['hidden']}"
            for name, shape in shapes.items()
        )
        raise BenchError(
            "The quality comparison needs one model in every format, and these sources are "
            f"different models ({described}): give --source for every format from the same "
            "model, or add --no-quality to compare only speed and memory."
        )


def _thousands(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def gguf_type_formats(folder) -> dict[str, str]:
    """One extra llama.cpp format per *.gguf file in `folder`, named after its file type:
    {"gguf-Q8_0": path}."""
    from helpers.gguf_tools import file_type_name, read_gguf

    if not Path(folder).is_dir():
        raise BenchError(
            f"--gguf-types {folder}: no such folder (notebook 04b or "
            "`python -m course.gguf_convert types` makes the course's)."
        )

    def format_name(path: Path) -> str:
        file_type = read_gguf(path).metadata.get("general.file_type")
        return f"gguf-{file_type_name(file_type) or path.stem}"

    return {format_name(path): str(path) for path in sorted(Path(folder).glob("*.gguf"))}


def run_benchmark(
    formats=tuple(FORMATS),
    prompts=DEFAULT_PROMPTS,
    new_tokens: int = 32,
    warmup: int = 1,
    repeats: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    quality: bool = True,
    sources: dict | None = None,
    out: str | Path | None = None,
    progress: str = "bar",
    long_prompt: str | None = None,
    long_prompt_formats=("hf-bf16", "hf-fp32"),
    gguf_types=None,
) -> dict:
    """Run the whole comparison and return (and, with `out`, write) the results as a dict.

    gguf_types: a folder of .gguf files, each timed as one more llama.cpp format
    (`gguf_type_formats`), without quality (notebook 04b measures their perplexity).

    long_prompt: also time reading this prompt (warm-up, then `repeats` runs of 2 new tokens) on
    `long_prompt_formats`, with the models already loaded: `long_prompt_tok_s` in their results.

    progress: "bar" (tqdm), "lines" (one 'PROGRESS i n label' line per step, for a parent that
    draws its own bar, e.g. notebook 08) or "none".
    """
    formats = parse_formats(formats)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if new_tokens < 2 or repeats < 1 or warmup < 0 or not prompts:
        raise BenchError("Need new_tokens >= 2, repeats >= 1, warmup >= 0 and at least one prompt.")
    threads = threads or default_threads()
    if device == "auto":
        from helpers.memory import pick_device

        device = pick_device("auto")
    given = bool(sources)
    sources = _sources(formats, sources)
    if quality and given:  # your own sources: one model, or no quality comparison
        check_one_model(sources)
    extra = {
        name: path
        for name, path in (gguf_type_formats(gguf_types) if gguf_types else {}).items()
        if name not in formats
    }
    formats, rated = formats + list(extra), formats
    sources.update(extra)
    # the workers' logs: next to the results (kept only if something failed), else in a temp folder
    if out:
        logs = Path(out).with_name(Path(out).stem + "-logs")
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
    else:
        logs = Path(tempfile.mkdtemp(prefix="qllm-bench-"))
    long_formats = (
        [f for f in parse_formats(long_prompt_formats) if f in formats] if long_prompt else []
    )
    steps = (
        len(formats) * (2 + warmup + repeats * len(prompts))
        + len(rated) * int(quality)
        + 2
        + len(long_formats)
    )
    tick = _progress(progress, steps)

    tick("memory bandwidth")
    bandwidth = _bandwidth(threads, device)
    results = {f: {"format": f, "what": spec(f)[2], "source": sources[f]} for f in formats}
    workers: dict[str, _Worker] = {}
    starting: dict[str, _Worker] = {}
    runs: list[dict] = []
    try:
        # Every worker imports its libraries at the same time (about 10 s saved on 2 cores), then
        # each loads alone, after all imports are done: a load's time is never shared with other
        # work.
        starting.update(
            {
                name: _Worker(name, sources[name], device, threads, logs / f"{name}.log")
                for name in formats
            }
        )
        for name, worker in list(starting.items()):
            try:
                worker.receive()  # "imported"
            except BenchError as err:
                results[name]["error"] = str(err)
                worker.close()
                del starting[name]
        for name, worker in starting.items():
            tick(f"load {name}")
            try:
                results[name].update(worker.ask("load"))
                workers[name] = worker
            except BenchError as err:
                results[name]["error"] = str(err)
                worker.close()
        for name, worker in workers.items():
            for i in range(warmup):
                tick(f"warm-up {name}")
                _generate(
                    worker, prompts[i % len(prompts)], min(new_tokens, WARMUP_TOKENS), results
                )
        order = list(workers)
        for rep in range(repeats):
            shift = rep % max(len(order), 1)
            for name in order[shift:] + order[:shift]:  # rotate who goes first
                for p, prompt in enumerate(prompts):
                    tick(f"round {rep + 1}/{repeats} {name}")
                    run = _generate(workers.get(name), prompt, new_tokens, results)
                    if run:
                        runs.append({"format": name, "round": rep + 1, "prompt": p, **run})
        for name in long_formats:
            tick(f"long prompt {name}")
            _long_prompt(workers.get(name), long_prompt, warmup, repeats, results)
        for name in list(workers):
            tick(f"memory {name}")
            try:
                results[name].update(workers[name].ask("memory"))
            except BenchError as err:
                results[name]["error"] = str(err)
        if quality:
            _quality(workers, rated, results, tick)
    finally:
        for worker in starting.values():  # every worker started, loaded or not
            worker.close()
    tick("done")

    report = {
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_summary(), "threads": threads, "device": device},
        "versions": _versions(),
        "settings": {
            "formats": formats,
            "prompts": prompts,
            "new_tokens": new_tokens,
            "warmup": warmup,
            "repeats": repeats,
            "threads": threads,
            "speed_reference": SPEED_REFERENCE,
            "long_prompt": long_prompt,
            "long_prompt_formats": long_formats,
            "gguf_types": list(extra),
            "quality_reference": QUALITY_REFERENCE,
            "held_out": {"en": "helpers/data/heldout.txt", "zh": "helpers/data/heldout_zh.txt"},
            "prediction_calibration": CALIBRATION,
        },
        "bandwidth": bandwidth,
        "results": [
            _summarize(results[f], [r for r in runs if r["format"] == f], bandwidth)
            for f in formats
        ],
        "runs": runs,
        "logs": str(logs),
    }
    report["ratios"] = ratios(report["results"])
    predicted = predictions(report["results"])
    for row in report["results"]:
        row.update(predicted.get(row["format"], {}))
    if not any(r.get("error") for r in report["results"]):
        shutil.rmtree(
            logs, ignore_errors=True
        )  # the workers' logs are kept only when something failed
        report["logs"] = None
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        partial.replace(out)  # never a half-written results file
    return report


def _progress(mode: str, total: int):
    count = [0]
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="bench", unit="step")

        def tick(label):
            bar.set_postfix_str(label)
            bar.update(1)
            if label == "done":
                bar.close()

        return tick

    def tick(label):
        count[0] += 1
        if mode == "lines":
            print(f"PROGRESS {count[0]} {total} {label}", flush=True)

    return tick


def _bandwidth(threads: int, device: str) -> dict:
    """Copy bandwidth (read + write) with 1 thread and with the benchmark's threads; bytes/s."""
    one = timing.copy_bandwidth(threads=1)
    many = timing.copy_bandwidth(threads=threads) if threads > 1 else one
    result = {
        "copy_1_thread_Bps": one,
        f"copy_{threads}_threads_Bps": many,
        "cpu_Bps": max(one, many),
    }
    if device.startswith("cuda"):
        result["gpu_Bps"] = gpu_copy_bandwidth()
    return result


def _generate(worker, prompt: str, new_tokens: int, results: dict) -> dict | None:
    if worker is None or "error" in results[worker.name]:
        return None
    try:
        run = worker.ask("generate", prompt=prompt, new_tokens=new_tokens)
    except BenchError as err:
        results[worker.name]["error"] = str(err)
        return None
    if run["new_tokens"] != new_tokens:  # equal work, or the comparison is void
        results[worker.name]["error"] = f"generated {run['new_tokens']} tokens, not {new_tokens}"
    results[worker.name]["sample_text"] = run["text"]
    return run


def _long_prompt(worker, prompt: str, warmup: int, repeats: int, results: dict) -> None:
    """Prompt reading speed on a long prompt: compute-bound, unlike decoding (notebook 08, bf16
    vs fp32)."""
    if worker is None or "error" in results[worker.name]:
        return
    try:
        runs = [
            worker.ask("generate", prompt=prompt, new_tokens=2) for _ in range(warmup + repeats)
        ][warmup:]
    except BenchError as err:
        results[worker.name]["error"] = str(err)
        return
    results[worker.name]["long_prompt_tokens"] = runs[0]["prompt_tokens"]
    results[worker.name]["long_prompt_tok_s"] = statistics.median(r["prompt_tok_s"] for r in runs)


HELD_OUT = {
    "en": "",
    "zh": "_zh",
}  # held-out text -> suffix of its result keys ("perplexity", "perplexity_zh")


def _quality(workers: dict, formats: list[str], results: dict, tick) -> None:
    """Perplexity and top-1 agreement with hf-bf16 on each held-out text (English, Chinese), on
    the same token ids."""
    from helpers.quality import heldout_text, top1_agreement

    alive = [f for f in formats if f in workers and "error" not in results[f]]
    if not alive:
        return
    # one tokenization per text for all, preferably by the full-precision model's tokenizer
    first = QUALITY_REFERENCE if QUALITY_REFERENCE in alive else alive[0]
    texts = {lang: heldout_text(lang) for lang in HELD_OUT}
    ids = {lang: workers[first].ask("tokenize", text=text) for lang, text in texts.items()}
    argmax = {lang: {} for lang in HELD_OUT}
    for name in [first] + [f for f in alive if f != first]:
        tick(f"quality {name}")
        try:
            for lang, suffix in HELD_OUT.items():
                own = workers[name].ask("tokenize", text=texts[lang])
                answer = workers[name].ask("quality", ids=own)
                results[name]["perplexity" + suffix] = answer["perplexity"]
                results[name]["heldout_tokens" + suffix] = len(own)
                # agreement compares predictions position by position: same tokens needed
                if own == ids[lang]:
                    argmax[lang][name] = answer["argmax"]
                else:
                    results[name]["quality_note"] = (
                        f"its tokenizer splits the {lang} held-out text differently "
                        f"({len(own)} vs {len(ids[lang])} "
                        "tokens): no top-1 agreement, perplexity not comparable"
                    )
        except BenchError as err:
            results[name]["error"] = str(err)
            continue
        workers[name].close()  # done with it: give its memory back now
    for lang, suffix in HELD_OUT.items():
        reference = argmax[lang].get(QUALITY_REFERENCE)
        for name, predicted in argmax[lang].items():
            if reference is not None:
                results[name]["top1_agreement" + suffix] = top1_agreement(predicted, reference)


def _summarize(result: dict, runs: list[dict], bandwidth: dict) -> dict:
    """Medians and spreads of the runs, the bandwidth ceiling, in plain units."""
    row = {k: v for k, v in result.items() if not k.endswith("_bytes")}
    units = {
        "size_bytes": ("size_MB", 1e6),
        "bytes_per_token": ("bytes_per_token_MB", 1e6),
        "rss_before_load_bytes": ("runtime_rss_MiB", 2**20),
        "peak_rss_bytes": ("peak_rss_MiB", 2**20),
    }
    for key, (column, unit) in units.items():
        if key in result:
            row[column] = result[key] / unit
    if runs:
        for key in ("ttft_s", "prompt_tok_s", "decode_tok_s", "prompt_tokens"):
            row[key] = statistics.median(r[key] for r in runs)
        for key, spread in (("ttft_s", "ttft_spread"), ("decode_tok_s", "decode_spread")):
            values = [r[key] for r in runs]  # (max - min) / median: how noisy the machine was
            row[spread] = (max(values) - min(values)) / row[key]
        row["runs"] = len(runs)
        row["new_tokens"] = runs[0]["new_tokens"]
        gpu = [r["peak_gpu_bytes"] for r in runs if r.get("peak_gpu_bytes")]
        row["peak_gpu_MiB"] = max(gpu) / 2**20 if gpu else None
    on_gpu = str(result.get("device", "")).startswith("cuda")
    usable = bandwidth.get("gpu_Bps") if on_gpu else bandwidth["cpu_Bps"]
    if "bytes_per_token" in result and usable:
        row["ceiling_tok_s"] = timing.decode_ceiling(usable, result["bytes_per_token"])
        if row.get("decode_tok_s"):
            row["pct_of_ceiling"] = 100 * row["decode_tok_s"] / row["ceiling_tok_s"]
    return row


def ratios(results: list[dict]) -> dict:
    """Each format against llama.cpp GGUF from the same run: x times its speed, size, memory."""
    by_name = {r["format"]: r for r in results}
    ref = by_name.get(SPEED_REFERENCE)
    if not ref or "decode_tok_s" not in ref:
        return {}
    out = {}
    for name, r in by_name.items():
        if "decode_tok_s" not in r:
            continue
        out[name] = {
            "decode_speed": r["decode_tok_s"] / ref["decode_tok_s"],
            "prompt_speed": r["prompt_tok_s"] / ref["prompt_tok_s"],
            "ttft": r["ttft_s"] / ref["ttft_s"],
            "load_time": r["load_s"] / ref["load_s"],
            "peak_rss": r["peak_rss_MiB"] / ref["peak_rss_MiB"] if r.get("peak_rss_MiB") else None,
            "size": r["size_MB"] / ref["size_MB"],
        }
    return out


def predictions(results: list[dict]) -> dict:
    """Each row's predicted decode speed, helpers.plan's rule: its ceiling x the efficiency
    (measured / ceiling) of its backend's calibration row in the same run (CALIBRATION: gguf for
    llama.cpp, hf-bf16 for Transformers), and predicted / measured. The calibration rows read 1.00
    by construction."""
    by_name = {r["format"]: r for r in results}
    out = {}
    for row in results:
        ref = by_name.get(CALIBRATION.get(row.get("backend"), ""), {})
        if all(r.get(key) for r in (ref, row) for key in ("decode_tok_s", "ceiling_tok_s")):
            predicted = ref["decode_tok_s"] * (
                row["ceiling_tok_s"] / ref["ceiling_tok_s"]
            )  # exactly 1 on ref
            out[row["format"]] = {
                "predicted_tok_s": predicted,
                "predicted_vs_measured": predicted / row["decode_tok_s"],
            }
    return out


def prediction_sentences(report: dict, tolerance: float = 0.30) -> list[str]:
    """Predicted against measured decode speed, row by row, for printing."""
    lines = []
    for r in report["results"]:
        if "predicted_vs_measured" in r and r["format"] not in CALIBRATION.values():
            ratio = r["predicted_vs_measured"]
            lines.append(
                f"{r['format']:18} predicted {r['predicted_tok_s']:6.1f} tok/s, measured "
                f"{r['decode_tok_s']:6.1f}: {ratio:.2f} "
                f"({'within' if abs(ratio - 1) <= tolerance else 'outside'} ±{tolerance:.0%})"
            )
    return lines


def _versions() -> dict:
    names = ("torch", "transformers", "gptqmodel", "llama-cpp-python", "gguf", "numpy")
    found = {name: installed_version(name, missing=None) for name in names}
    found["python"] = sys.version.split()[0]
    return found


# ---- reading and printing results --------------------------------------------------------------

TABLE_COLUMNS = {  # column in the JSON -> header in the table
    "size_MB": "size on disk (MB)",
    "peak_rss_MiB": "peak RAM (MiB)",
    "load_s": "load (s)",
    "ttft_s": "TTFT (s)",
    "prompt_tok_s": "prompt tok/s",
    "decode_tok_s": "decode tok/s",
    "decode_spread": "decode spread",
    "bytes_per_token_MB": "MB read/token",
    "ceiling_tok_s": "ceiling tok/s",
    "pct_of_ceiling": "% of ceiling",
    "predicted_tok_s": "predicted tok/s",
    "predicted_vs_measured": "predicted / measured",
    "perplexity": "perplexity (en)",
    "top1_agreement": "top-1 agreement (en)",
    "perplexity_zh": "perplexity (zh)",
    "top1_agreement_zh": "top-1 agreement (zh)",
}


def load_results(path) -> dict:
    """Read a results JSON written by `python -m bench --out`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def results_table(report: dict):
    """The results as a pandas DataFrame, one row per format, readable column names."""
    import pandas as pd

    frame = pd.DataFrame(report["results"]).set_index("format")
    for column in TABLE_COLUMNS:
        if column not in frame:
            frame[column] = float("nan")
    table = frame[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
    if "error" in frame:
        table["error"] = frame["error"].fillna("")
    return table


def ratio_sentences(report: dict) -> list[str]:
    """Plain sentences of the ratios against llama.cpp GGUF, for printing."""
    lines = []
    for name, r in report.get("ratios", {}).items():
        if name == SPEED_REFERENCE:
            continue
        lines.append(
            f"{name:18} decodes at {r['decode_speed']:.2f}x llama.cpp's speed, reads prompts at "
            f"{r['prompt_speed']:.2f}x, first token after {r['ttft']:.2f}x the time, loads in "
            f"{r['load_time']:.1f}x the time, peaks at {r['peak_rss']:.2f}x the RAM, "
            f"is {r['size']:.2f}x the size on disk"
        )
    return lines


def print_report(report: dict) -> None:
    """The table and the ratios, for a terminal."""
    import pandas as pd

    bw = report["bandwidth"]
    machine = report["machine"]
    print(
        f"\n{machine['cpu']} | {machine['cores']} cores | {machine['threads']} threads | "
        f"{machine['device']}"
    )
    print(
        f"copy bandwidth: {bw['copy_1_thread_Bps'] / 1e9:.1f} GB/s on 1 thread, "
        f"{bw['cpu_Bps'] / 1e9:.1f} GB/s best (ceiling = bandwidth / bytes read per token)"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 2):
        print(results_table(report).drop(columns=["error"], errors="ignore").T.to_string())
    for row in report["results"]:
        if row.get("error"):
            print(f"\n{row['format']} FAILED: {row['error']}")
    if report.get("logs"):
        print(f"(the workers' logs: {report['logs']})")
    if report.get("ratios"):
        print("\nAgainst llama.cpp GGUF, in this run:")
        for line in ratio_sentences(report):
            print("  " + line)
    lines = prediction_sentences(report)
    if lines:
        print(
            f"\nPredicted decode speed = ceiling x the efficiency (measured / ceiling) of "
            f"{CALIBRATION['llama.cpp']} for llama.cpp rows and of {CALIBRATION['transformers']} "
            "for Transformers "
            "rows, in this run (those two rows read 1.00 by construction):"
        )
        for line in lines:
            print("  " + line)
