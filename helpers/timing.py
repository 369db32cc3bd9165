"""Measure a generation honestly: load time, time to first token, prompt and decode speed, memory.

    lm = load_model(course_models.model_path("gguf"))
    t = measure(lm, ["The printing press", "印刷术的历史"], new_tokens=32, warmup=1, repeats=3)
    pd.DataFrame([t.row()])    # medians, spreads, peak memory

Every run decodes greedily and exactly `new_tokens` tokens (end-of-sequence cannot stop it
early), so formats are compared on equal work. Thread counts are fixed (QLLM_THREADS).
The speed ceiling of decoding is memory bandwidth: each new token reads every weight once, so
`decode_ceiling(copy_bandwidth(), bytes_per_token(lm))` is the most tokens/s this machine could
give.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from .env import default_threads
from .errors import CourseError
from .generation import backend_of, claim
from .loading import LoadedModel
from .model_info import gguf_header


@dataclass
class RunTiming:
    """One timed generation."""

    prompt_tokens: int
    new_tokens: int  # tokens actually generated (== requested, by construction)
    ttft_s: float  # start of the call -> first new token (includes reading the prompt)
    prompt_tok_s: float  # prompt_tokens / ttft_s
    decode_tok_s: float  # (new_tokens - 1) / time from first to last new token
    total_s: float
    peak_rss_bytes: int  # highest resident memory of this process so far (since reset_peak_rss)
    peak_gpu_bytes: int | None = None  # CUDA only
    text: str = ""


@dataclass
class Timing:
    """Median and spread of several runs of one model; `row()` gives a pandas row."""

    format: str
    backend: str
    device: str
    dtype: str
    threads: int
    load_s: float
    runs: list[RunTiming] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(r, name) for r in self.runs)

    def spread(self, name: str) -> float:
        """(max - min) / median, a fraction: how noisy the runs were."""
        values = [getattr(r, name) for r in self.runs]
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else 0.0

    def row(self) -> dict:
        gpu = [r.peak_gpu_bytes for r in self.runs if r.peak_gpu_bytes is not None]
        return {
            "format": self.format,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "runs": len(self.runs),
            "load_s": self.load_s,
            **{
                name: self.median(name)
                for name in (
                    "prompt_tokens",
                    "new_tokens",
                    "ttft_s",
                    "prompt_tok_s",
                    "decode_tok_s",
                )
            },
            "decode_spread": self.spread("decode_tok_s"),
            "ttft_spread": self.spread("ttft_s"),
            "peak_rss_MiB": max(r.peak_rss_bytes for r in self.runs) / 2**20,
            "peak_gpu_MiB": max(gpu) / 2**20 if gpu else None,
        }


# ---- memory ---------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """Highest resident memory of this process (Linux VmHWM; elsewhere ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ---- one generation -------------------------------------------------------------------------


def set_threads(lm: LoadedModel, threads: int) -> None:
    """Pin the thread count of a loaded model (torch, or the llama.cpp context)."""
    backend_of(lm).set_threads(threads)


def time_generation(lm: LoadedModel, prompt: str | list[int], new_tokens: int = 32) -> RunTiming:
    """Generate exactly `new_tokens` tokens greedily after `prompt` (text, or token ids) and time
    each phase.

    The course's one definition of the figures: TTFT from the call to the first new token (reading
    the prompt included); decode tokens/s = tokens after the first / time from the first to the
    last."""
    with claim(lm):
        return _time_generation(lm, prompt, new_tokens)


def _time_generation(lm: LoadedModel, prompt: str | list[int], new_tokens: int) -> RunTiming:
    if new_tokens < 2:
        raise CourseError(f"new_tokens={new_tokens}: decode speed needs at least 2 new tokens.")
    times, prompt_tokens, text, gpu = backend_of(lm).timed_run(prompt, new_tokens)
    started, stamps = times[0], times[1:]
    ttft = stamps[0] - started
    return RunTiming(
        prompt_tokens=prompt_tokens,
        new_tokens=len(stamps),
        ttft_s=ttft,
        prompt_tok_s=prompt_tokens / ttft,
        decode_tok_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]),
        total_s=stamps[-1] - started,
        peak_rss_bytes=peak_rss_bytes(),
        peak_gpu_bytes=gpu,
        text=text,
    )


def measure(
    lm: LoadedModel,
    prompts,
    new_tokens: int = 32,
    warmup: int = 1,
    repeats: int = 3,
    threads: int | None = None,
) -> Timing:
    """Warm up, then time `repeats` rounds over all prompts; returns the runs and their medians."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    threads = threads or default_threads()
    with claim(lm):  # the whole measurement: no other generation between its runs
        set_threads(lm, threads)
        for i in range(warmup):
            _time_generation(lm, prompts[i % len(prompts)], new_tokens)
        runs = [_time_generation(lm, p, new_tokens) for _ in range(repeats) for p in prompts]
    timing = Timing(
        format=lm.format,
        backend=lm.backend,
        device=lm.device,
        dtype=lm.dtype,
        threads=threads,
        load_s=lm.load_seconds,
        runs=runs,
    )
    return timing


# ---- the bandwidth ceiling ------------------------------------------------------------------


def copy_bandwidth(threads: int = 1, mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy, counting the read and the write; best of `repeats`."""
    import numpy as np

    if mib < 1 or threads < 1:
        raise CourseError("copy_bandwidth needs mib >= 1 and threads >= 1.")
    n = mib * 2**20
    src = np.ones(n, dtype=np.uint8)
    dst = np.zeros(n, dtype=np.uint8)  # zeros() then a first copy: no page faults inside the timing
    np.copyto(dst, src)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        if threads == 1:
            np.copyto(dst, src)
        else:
            workers = [
                threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds
            ]
            for w in workers:  # numpy releases the GIL while it copies
                w.start()
            for w in workers:
                w.join()
        best = min(best, time.perf_counter() - started)
    return 2 * n / best


def weights_read_per_token(sizes: dict, embedding, head, rows: int) -> int:
    """Bytes read per decoded token, from each weight's bytes (`sizes`, by any key): every weight
    once, except an input `embedding` with a separate output `head`, of which one of its `rows` rows
    is read. A tied head (the same key as the embedding) is read whole."""
    total = sum(sizes.values())
    if head in sizes and embedding in sizes and head != embedding:
        total -= sizes[embedding] - sizes[embedding] // rows
    return total


def gguf_bytes_per_token(source) -> int:
    """Weight bytes llama.cpp reads per decoded token, from a .gguf path or its header as
    `model_info.gguf_header` or `gguf_header_remote` give it (no weights needed):
    `weights_read_per_token`, head `output.weight`."""
    header = source if isinstance(source, dict) else gguf_header(source)
    # GGUF order: the vocabulary comes last
    rows = header["shapes"].get("token_embd.weight", [1])[-1]
    return weights_read_per_token(
        header["tensor_bytes"], "token_embd.weight", "output.weight", rows
    )


def torch_bytes_per_token(model) -> int:
    """Weight bytes a Transformers model reads per decoded token: `weights_read_per_token` over its
    state dict, by storage (a tied tensor counts once). Quantized layers count their packed weights,
    scales and zeros (CPU kernels repack them to about that size)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    sizes = {}
    for tensor in model.state_dict().values():
        sizes.setdefault(tensor.data_ptr(), tensor.numel() * tensor.element_size())
    # no output head at all: the embedding is only looked up, one row per token
    head_key = None if head is None else head.weight.data_ptr()
    if head is None:
        sizes[head_key] = 0
    return weights_read_per_token(sizes, embedding.data_ptr(), head_key, embedding.shape[0])


def bytes_per_token(lm: LoadedModel) -> int:
    """Weight bytes read per decoded token for any loaded model: its torch module's, else (a GGUF on
    llama.cpp) the file's."""
    torch_model = backend_of(lm).torch_model
    return (
        gguf_bytes_per_token(lm.path) if torch_model is None else torch_bytes_per_token(torch_model)
    )


def decode_ceiling(bandwidth_bytes_s: float, bytes_per_token_: int) -> float:
    """The most tokens/s memory bandwidth allows: bandwidth / bytes read per token."""
    return bandwidth_bytes_s / bytes_per_token_
