"""One model format in its own process, driven by `bench.compare` through a socket.

    # (bench.compare starts it)
    python -m bench.worker FORMAT SOURCE DEVICE THREADS LOG_PATH SOCKET_FD

Each format gets a fresh process so that its peak resident memory is its own: the runtime it
imports (torch, GPTQModel, llama.cpp) plus its weights, nothing left over from another format.
All workers stay loaded while the parent asks them, one at a time, to generate; an idle worker
waits on its socket and takes no CPU.
"""

from __future__ import annotations

import os
import traceback

import psutil

# name -> (course model, how to load it, what it is)
FORMATS = {
    # the GGUF quantized by llama.cpp from hf, as gptq and awq are by GPTQModel: one reference for
    # all
    "gguf": ("gguf-from-hf", {}, "llama.cpp, GGUF Q4_K_M (from hf)"),
    "gptq": ("gptq", {}, "Transformers + GPTQModel, GPTQ 4-bit g128"),
    "awq": ("awq", {}, "Transformers + GPTQModel, AWQ 4-bit g128"),
    "hf-bf16": ("hf", {"dtype": "bfloat16"}, "Transformers, bf16 (full precision reference)"),
    "hf-fp32": ("hf", {"dtype": "float32"}, "Transformers, fp32"),
    "gguf-transformers": (
        "gguf-from-hf",
        {"transformers": True, "dtype": "float32"},
        "Transformers reading the GGUF (dequantized to fp32)",
    ),
}


def spec(name: str) -> tuple:
    """FORMATS[name]; an extra GGUF file (`--gguf-types`: gguf-Q8_0, gguf-F16, ...) loads like gguf,
    in llama.cpp."""
    if name not in FORMATS and name.startswith("gguf-"):
        return "gguf", {}, f"llama.cpp, GGUF {name[5:]}"
    return FORMATS[name]


def load(name: str, source, device: str, threads: int):
    """Load format `name` from `source` (a path or hub id) the way the course loads it."""
    from helpers import loading

    _, how, _ = spec(name)
    if how.get("transformers"):
        return loading.load_gguf_in_transformers(source, device, how.get("dtype"), threads)
    return loading.load_model(source, device=device, dtype=how.get("dtype"), n_threads=threads)


def _import_backend(name: str) -> None:
    """Import the libraries a format needs before the load clock starts (timed separately)."""
    import importlib

    course, how, _ = spec(name)
    for module in ("llama_cpp",) if course == "gguf" and not how else ("torch", "transformers"):
        importlib.import_module(module)
    if name in ("gptq", "awq"):
        from helpers.kernels import import_gptqmodel_quietly

        import_gptqmodel_quietly()


def _quality(lm, ids: list[int], threads: int) -> dict:
    """Perplexity on the held-out ids and the next-token argmax at every position."""
    from helpers import generation, quality

    torch_model = generation.backend_of(lm).torch_model
    if torch_model is None:  # a GGUF on llama.cpp
        # logits for every position need their own context (logits_all); the weights are shared
        # (mmap)
        logits = quality.gguf_logits(
            lm.path,
            ids,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if lm.device.startswith("cuda") else 0,
        )
    else:
        logits = quality.transformers_logits(torch_model, ids)
    return {
        "perplexity": quality.perplexity_from_logits(logits, ids),
        "argmax": logits[: len(ids) - 1].argmax(-1).tolist(),
    }


def serve(conn, name: str, source: str, device: str, threads: int, log_path: str) -> None:
    """The worker's life: import, wait for 'load', load, then answer requests until 'close'."""
    # Library chatter goes to a log file, not into the benchmark's table.
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for var in ("QLLM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helpers import generation, memory, timing

    lm = None
    try:
        _import_backend(name)
        # The parent starts every worker at once, so imports overlap; loads are timed one at a time.
        conn.send(("ok", "imported"))
        if conn.recv()[0] != "load":
            return
        rss_before = psutil.Process().memory_info().rss
        lm = load(name, source, device, threads)
        timing.set_threads(lm, threads)
        if generation.backend_of(lm).ignores_gpu():  # n_gpu_layers is then silently ignored
            lm.device = "cpu"
            lm.notes.append(
                "llama-cpp-python was built without GPU support: it ran on the CPU "
                "(rebuild with CMAKE_ARGS=-DGGML_CUDA=on)"
            )
        conn.send(
            (
                "ok",
                {
                    "load_s": lm.load_seconds,
                    "rss_before_load_bytes": rss_before,
                    "backend": lm.backend,
                    "device": lm.device,
                    "dtype": lm.dtype,
                    "path": str(lm.path),
                    "size_bytes": memory.weights_bytes(lm.path),
                    "notes": list(lm.notes),
                },
            )
        )
    except Exception as err:  # report, do not crash the benchmark
        traceback.print_exc()
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            command, args = conn.recv()
        except EOFError:
            break
        try:
            if command == "close":
                break
            if command == "generate":
                run = timing.time_generation(lm, args["prompt"], args["new_tokens"])
                conn.send(("ok", run.__dict__))
            elif command == "tokenize":
                ids = generation.backend_of(lm).plain_ids(args["text"])
                conn.send(("ok", list(ids)))
            elif command == "memory":
                # after a warm-up: CPU kernels repack quantized weights on their first forward
                conn.send(
                    (
                        "ok",
                        {
                            "peak_rss_bytes": timing.peak_rss_bytes(),
                            "bytes_per_token": timing.bytes_per_token(lm),
                        },
                    )
                )
            elif command == "quality":
                conn.send(("ok", _quality(lm, args["ids"], threads)))
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception as err:
            traceback.print_exc()
            conn.send(("error", f"{type(err).__name__}: {err}"))
    if lm is not None:
        generation.backend_of(lm).close()  # else llama.cpp's destructor fails noisily at exit


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    fmt, src, dev, n_threads, log_file, fd = sys.argv[1:7]
    serve(Connection(int(fd)), fmt, src, dev, int(n_threads), log_file)
