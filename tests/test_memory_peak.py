"""The memory-fit estimate against the real peak: each course model loaded in a fresh process.

`memory.estimate_memory_bytes` is a stated rule of thumb (weights x1.5 + 600 MiB for Transformers,
x1.2 + 300 MiB for llama.cpp). Here it meets the measurement it stands for: the peak resident memory
of loading the model and generating a few tokens, above what the imported libraries already took.
The estimate must cover that peak, and not by so much that the check refuses models that would fit.
Formats not built yet are skipped (`make models` builds them).
"""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course import models as course_models
from helpers import memory

ROOT = Path(__file__).resolve().parent.parent
LOOSEST = 4  # the estimate may be at most this many times the measured growth

# Runs in a fresh interpreter: the backend libraries first (not part of the estimate), then one
# load_model + generate, with the peak reset just before loading.
PROBE = r"""
import gc, json, sys
import psutil
from helpers import generation, kernels, loading, timing

fmt, path = sys.argv[1], sys.argv[2]
if fmt == "gguf":
    import llama_cpp
else:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if fmt in ("gptq", "awq"):
        kernels.import_gptqmodel_quietly()
gc.collect()
resettable = timing.reset_peak_rss()
before = psutil.Process().memory_info().rss
lm = loading.load_model(path, device="cpu")
text = generation.generate(lm, "The capital of France is", max_new_tokens=8)
print(json.dumps({"resettable": resettable, "before": before, "peak": timing.peak_rss_bytes(),
                  "after": psutil.Process().memory_info().rss, "text": text}))
"""


def _status(fmt: str) -> str:
    try:
        return course_models.status(fmt)
    except Exception as err:  # a backend package missing: the recipe cannot even be computed
        return f"unknown: {type(err).__name__}"


@pytest.mark.parametrize(
    "fmt", [f for f in course_models.FORMATS if f != "gguf-from-hf"]
)  # a Q4_K_M as gguf
def test_memory_estimate_covers_the_real_peak_of_each_course_model(fmt):
    """Peak RSS growth of load + generate <= the estimate < LOOSEST x that growth."""
    status = _status(fmt)
    if status != "ready":
        pytest.skip(f"the {fmt} course model is {status}, not ready (make models builds it)")
    path = course_models.model_path(fmt)
    env = dict(os.environ, QLLM_THREADS=os.environ.get("QLLM_THREADS", "2"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, fmt, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if not measured["resettable"]:
        pytest.skip(
            "this system cannot reset the peak RSS (/proc/self/clear_refs): no clean measurement"
        )
    estimate = memory.estimate_memory_bytes(path, fmt)
    growth = measured["peak"] - measured["before"]
    mib = 2**20
    figures = (
        f"{fmt}: estimate {estimate / mib:.0f} MiB; measured peak growth {growth / mib:.0f} MiB "
        f"(RSS {measured['before'] / mib:.0f} MiB after the imports, peak "
        f"{measured['peak'] / mib:.0f} MiB, {measured['after'] / mib:.0f} MiB after generating); "
        f"weights {memory.weights_in_memory_bytes(path) / mib:.0f} MiB"
    )
    assert measured["text"].strip(), figures
    assert growth <= estimate, "the estimate is below the real peak: " + figures
    assert estimate < LOOSEST * growth, (
        f"the estimate is more than {LOOSEST}x the real peak: " + figures
    )


def test_the_repacked_bytes_are_the_copy_llama_cpp_makes(course_cache):
    """memory.repacked_bytes against llama.cpp's own load log: its CPU_REPACK buffer."""
    from helpers import model_info

    path = course_models.model_path("gguf")
    expected = memory.repacked_bytes(model_info.gguf_header(path))
    load = (
        "import sys, llama_cpp\n"
        "llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=1, verbose=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", load, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = re.findall(r"CPU_REPACK model buffer size =\s+([\d.]+) MiB", done.stderr)
    if not memory.cpu_repacks():
        assert not sizes, "llama.cpp repacked on a CPU the rule says it does not"
        return
    assert sizes, "no CPU_REPACK buffer in llama.cpp's load log:\n" + done.stderr[-2000:]
    assert float(sizes[0]) == round(expected / 2**20, 2)
