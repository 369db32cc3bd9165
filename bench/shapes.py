"""Do random weights decode at the speed of real ones? The course GGUF against its random twin.

    python -m bench.shapes                       # 3 rounds, 64 tokens, the order alternating
    python -m bench.shapes --rounds 5 --out build/shapes-bench.json
    python -m bench.shapes --keep f32,scales     # the twin takes the real norms and block scales
    python -m bench.shapes --real ~/.cache/quantized-llms-locally/gguf/gemma-3-270m-Q4_K_M.gguf
    python -m bench.shapes --shape mistral-7b    # time a shaped Q4_K_M (made first if missing)

Figures and what they mean: docs/measurements.md, "Random weights against real ones".

The twin (course.shapes.write_gguf_like) has the course GGUF's metadata, tensor names, shapes and
types, and random blocks of the spread `course.shapes` gives every shaped checkpoint. The real
weights are a byte-identical copy of the course GGUF, written the same way (--real: another
file). Each measurement is bench.gguf_bench's fresh process (a warm-up, then the median of 3 runs),
on the same prompt ids; the two files take turns going first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.env import cpu_name, default_threads
from helpers.errors import CourseError

from course import models as course_models
from course import shapes
from helpers.procs import child_command

from .gguf_bench import bench_in_subprocess

# fixed ids every run reads: ordinary tokens of both vocabularies, after the course model's bos
PROMPT_IDS = [2] + list(range(1000, 1031))


def random_twin(reference: Path, seed: int = 0, keep: tuple[str, ...] = ()) -> Path:
    """The random-weights copy of `reference` (with the parts `keep` names taken from it), made
    once under the shapes cache (atomically)."""
    folder = shapes.shapes_dir() / ("course-gguf-random" + "".join(f"-{k}" for k in keep))
    out = folder / reference.name
    stamp = folder / shapes.STAMP
    recipe = {"reference": str(reference), "bytes": reference.stat().st_size, "seed": seed}
    recipe["keep"] = list(keep)
    recipe["recipe_version"] = shapes.RECIPE_VERSION
    if out.exists() and stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return out
    course_models.check_free_disk(
        int(reference.stat().st_size * shapes.DISK_MARGIN),
        "Making the course GGUF's random twin",
        folder=shapes.shapes_dir(),
        error=shapes.ShapeError,
    )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        shapes.write_gguf_like(reference, partial, seed=seed, keep=keep)
        partial.rename(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    (folder / "README.md").write_text(
        f"# The course GGUF's random twin\n\n{shapes.NOTICE}\n\nMade by `python -m bench.shapes`.\n"
    )
    stamp.write_text(json.dumps(recipe, indent=2) + "\n")
    return out


def compare(
    rounds: int, n_tokens: int, threads: int, keep: tuple[str, ...] = (), real: Path | None = None
) -> dict:
    """Fresh processes, in turns: the real weights against the random twin. The real weights are
    a byte-identical copy of the course GGUF written like the twin (the course file itself ran a
    few percent slower than such a copy: docs/measurements.md), unless `real` names a file."""
    course = course_models.model_path("gguf")
    if not course.exists():
        raise CourseError(f"{course} is missing: run `python -m course.models build` first.")
    real = Path(real) if real else random_twin(course, keep=shapes.KEEPABLE)
    twin = random_twin(course, keep=keep)
    runs: dict[str, list[dict]] = {"real": [], "random": []}
    for i in range(rounds):
        order = ("real", "random") if i % 2 == 0 else ("random", "real")
        for which in order:
            path = real if which == "real" else twin
            result = bench_in_subprocess("llama.cpp", path, PROMPT_IDS, n_tokens, threads=threads)
            # other processes on the machine slow llama.cpp's spinning threads: say how busy it was
            result["load_average_1min"] = os.getloadavg()[0]
            runs[which].append(result)
            print(
                f"round {i + 1} {which:6}: {result['decode_tok_s']:.2f} tok/s "
                f"(load average {result['load_average_1min']:.2f})",
                flush=True,
            )
    medians = {k: statistics.median(r["decode_tok_s"] for r in v) for k, v in runs.items()}
    best = {k: max(r["decode_tok_s"] for r in v) for k, v in runs.items()}
    return {
        "machine": cpu_name(),
        "threads": threads,
        "new_tokens": n_tokens,
        "rounds": rounds,
        "real": str(real),
        "random": str(twin),
        "kept_from_real": list(keep),
        "decode_tok_s": {k: [r["decode_tok_s"] for r in v] for k, v in runs.items()},
        "load_average_1min": {k: [r["load_average_1min"] for r in v] for k, v in runs.items()},
        "median_decode_tok_s": medians,
        "best_decode_tok_s": best,
        "random_over_real": medians["random"] / medians["real"],
        "random_over_real_best": best["random"] / best["real"],
    }


LOG_BUFFERS = re.compile(r"(CPU_REPACK|CPU_Mapped|CPU) model buffer size =\s+([\d.]+) MiB")


def load_log_buffers(path: Path, threads: int) -> dict[str, float]:
    """The model buffers llama.cpp's load log reports (MiB), from a verbose load in a child."""
    argv, env = child_command("bench.shapes", "_load-log", str(path), str(threads))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    return {name: float(mib) for name, mib in LOG_BUFFERS.findall(proc.stderr)}


def _load_log_main(path: str, threads: str) -> None:
    import llama_cpp

    llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=int(threads), verbose=True)


def time_shape(name: str, n_tokens: int, threads: int) -> dict:
    path = shapes.make(name, "gguf")
    result = bench_in_subprocess(
        "llama.cpp", path, [1] + list(range(1000, 1031)), n_tokens, threads=threads
    )
    result["model_buffers_MiB"] = load_log_buffers(path, threads)
    return {"machine": cpu_name(), "threads": threads, "shape": name, "path": str(path), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shapes", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shape", choices=list(shapes.SHAPES), help="time this shape's GGUF")
    parser.add_argument(
        "--keep",
        default="",
        help="parts the twin takes from the real file, comma-separated: "
        + ", ".join(shapes.KEEPABLE),
    )
    parser.add_argument(
        "--real",
        help="the real GGUF to time (default: a fresh byte-identical copy of the course's)",
    )
    parser.add_argument("--out", help="write the results here (JSON)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_load-log"]:
        _load_log_main(*argv[1:])
        return 0
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    print(shapes.NOTICE, flush=True)
    try:
        if args.shape:
            report = time_shape(args.shape, args.new_tokens, threads)
        else:
            keep = tuple(k for k in args.keep.split(",") if k)
            unknown = [k for k in keep if k not in shapes.KEEPABLE]
            if unknown:
                raise CourseError(f"--keep {','.join(unknown)}: choose from {shapes.KEEPABLE}")
            report = compare(args.rounds, args.new_tokens, threads, keep=keep, real=args.real)
    except CourseError as err:
        print(f"bench.shapes: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
