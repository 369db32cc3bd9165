"""Load time, decode speed and peak memory of one GGUF configuration, each in a fresh process.

    # notebook 04, section 4
    bench_in_subprocess("llama.cpp", path, prompt_ids)
    # Transformers reading the GGUF
    bench_in_subprocess("transformers", path, prompt_ids, dtype="float32")

Course machinery: a fresh process per configuration, so one load's peak memory cannot hide in
another's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from helpers.env import default_threads
from helpers.errors import CourseError
from helpers import timing
from helpers.loading import LoadedModel, load_gguf_in_transformers, new_llama

from helpers.procs import child_command


def _speed(lm: LoadedModel, prompt_ids: list[int], n_tokens: int) -> dict:
    """TTFT and decode tokens/s by the course's one definition (helpers.timing): a warm-up, then the
    median of 3 runs, each generating exactly n_tokens greedily."""
    t = timing.measure(lm, [prompt_ids], new_tokens=n_tokens, warmup=1, repeats=3)
    return {"ttft_s": t.median("ttft_s"), "decode_tok_s": t.median("decode_tok_s")}


def bench_llama_cpp(path: str, prompt_ids: list[int], n_tokens: int, threads: int) -> dict:
    started = time.perf_counter()
    llm = new_llama(path, n_ctx=512, n_threads=threads, n_threads_batch=threads)
    lm = LoadedModel(
        model=llm,
        tokenizer=None,
        format="gguf",
        backend="llama.cpp",
        path=Path(path),
        device="cpu",
        dtype="GGUF",
        load_seconds=time.perf_counter() - started,
        context_length=512,
    )
    return {
        "load_s": lm.load_seconds,
        **_speed(lm, prompt_ids, n_tokens),
        "weights_MiB": Path(path).stat().st_size / 2**20,
        "linear weights": "GGUF blocks (mmap)",
    }


def bench_transformers(
    path: str, prompt_ids: list[int], n_tokens: int, threads: int, dtype: str
) -> dict:
    import torch

    lm = load_gguf_in_transformers(path, "cpu", dtype, threads, with_tokenizer=False)
    linear = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    classes = sorted({type(m).__name__ for m in linear})
    dtypes = sorted({str(m.weight.dtype).replace("torch.", "") for m in linear})
    return {
        "load_s": lm.load_seconds,
        **_speed(lm, prompt_ids, n_tokens),
        "weights_MiB": sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20,
        "linear weights": f"{len(linear)} x {'/'.join(classes)} in {'/'.join(dtypes)}",
    }


def bench_in_subprocess(
    backend: str,
    path,
    prompt_ids: list[int],
    n_tokens: int = 32,
    dtype: str = "float32",
    threads: int | None = None,
    timeout: int = 900,
) -> dict:
    """Load + decode speed + peak RSS of one configuration in a fresh Python process (peaks don't
    mix)."""
    threads = threads or default_threads()
    job = json.dumps(
        {
            "backend": backend,
            "path": str(path),
            "prompt_ids": prompt_ids,
            "n_tokens": n_tokens,
            "dtype": dtype,
            "threads": threads,
        }
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    argv, env = child_command("bench.gguf_bench", job, env=env)  # dies with us
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise CourseError(
            f"The {backend} benchmark process failed (exit code {proc.returncode}):\n"
            + "\n".join(proc.stderr.strip().splitlines()[-12:])
        )
    result = json.loads(lines[-1][6:])
    result["messages"] = [
        line
        for line in proc.stderr.splitlines()
        if "[transformers]" in line or "warn" in line.lower()
    ][:5]
    return result


def _bench_main(job_json: str) -> None:
    job = json.loads(job_json)
    rss_start = psutil.Process().memory_info().rss / 2**20
    if job["backend"] == "llama.cpp":
        result = bench_llama_cpp(job["path"], job["prompt_ids"], job["n_tokens"], job["threads"])
    else:
        result = bench_transformers(
            job["path"], job["prompt_ids"], job["n_tokens"], job["threads"], job["dtype"]
        )
    result.update(peak_rss_MiB=timing.peak_rss_bytes() / 2**20, rss_before_loading_MiB=rss_start)
    print("BENCH " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _bench_main(sys.argv[1])
