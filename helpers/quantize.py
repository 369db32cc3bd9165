"""Small tools for notebooks 02/03, where you quantize the course model yourself with GPTQModel.

    log = cache / "gptq.log"
    run_quietly(lambda: model.quantize(rows, batch_size=1), log, layers=18, desc="GPTQ")
    with awq_search_in_fp32(): ...    # AWQ's search arithmetic in fp32 on a bf16 model
    save_as(model, out, "bfloat16")   # a checkpoint in bf16, whatever the dtype it was quantized in
    unpack_int4(qweight, dim=0)       # 8 four-bit values out of every int32
    folder_bytes(out)                 # size on disk

GPTQModel prints hundreds of progress lines per run; `run_quietly` sends them to a log file and
shows one tqdm bar over the decoder layers instead (parsed from that log, so the bar lives in the
notebook's own thread, where widget updates are reliable).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from pathlib import Path

from .errors import CourseError

_LAYER = re.compile(rb"model\.layers\.(\d+)")


def run_quietly(work, log_path, layers: int | None = None, desc: str = "quantizing"):
    """Run `work()` with stdout/stderr going to `log_path`; show progress over `layers`; return its result."""
    from tqdm.auto import tqdm

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=layers, desc=desc, unit="layer", disable=not layers)  # created first: keeps the real stderr
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as err:  # re-raised in the caller's thread below
            outcome["error"] = err

    with open(log_path, "wb", buffering=0) as raw, open(log_path, "rb") as reader:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            worker = threading.Thread(target=target, daemon=True)
            worker.start()
            done = 0
            while worker.is_alive():
                worker.join(0.5)
                found = [int(m) for m in _LAYER.findall(reader.read())]
                if found and layers and min(max(found), layers) > done:  # the layer after the one in work
                    bar.update(min(max(found), layers) - done)
                    done = min(max(found), layers)
            text.flush()
            text.detach()  # leave closing the file to `raw`
    if "error" in outcome:
        bar.close()
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])[-3000:]
        raise CourseError(f"{desc} failed: {outcome['error']!r}. Full log: {log_path}\n--- last lines ---\n{tail}") \
            from outcome["error"]
    if layers:
        bar.update(layers - done)
    bar.close()
    return outcome.get("value")


@contextlib.contextmanager
def awq_search_in_fp32():
    """Run the matrix products of GPTQModel 7.6.0's AWQ in float32 on a bf16 model.

    AWQ multiplies thousands of calibration rows by each layer: to capture its inputs, once per
    candidate scale (20 of them) and per clipping threshold. That is many-row work, several times
    slower in bf16 than in fp32 on a CPU without native bf16 (helpers/precision.py). The model stays
    bf16, as GPTQModel's AWQ expects (its CPU AWQ kernel packs 16-bit layers only, and a float32
    model came out worse); while the block runs, an nn.Linear given 16 or more bf16 rows on the CPU
    multiplies them in fp32 and rounds the result to bf16, which is what a bf16 product that
    accumulates in fp32 returns too, and the clip search gets fp32 copies of its weights and inputs.
    """
    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor

    original_linear, original_clip = torch.nn.Linear.forward, AWQProcessor._compute_best_clip

    def linear_forward(self, x):
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() >= 16 * x.shape[-1]:
            bias = None if self.bias is None else self.bias.float()
            return torch.nn.functional.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return original_linear(self, x)

    def compute_best_clip(self, w, input_feat, *args, **kwargs):
        return original_clip(self, w.float(), input_feat.float(), *args, **kwargs).to(w.dtype)

    torch.nn.Linear.forward, AWQProcessor._compute_best_clip = linear_forward, compute_best_clip
    try:
        yield
    finally:
        torch.nn.Linear.forward, AWQProcessor._compute_best_clip = original_linear, original_clip


def save_as(qmodel, out, dtype: str = "bfloat16") -> None:
    """Save a GPTQModel-quantized model, then store its float tensors (embedding, norms, scales) in `dtype`.

    A model quantized in float32 is saved in float32 otherwise: twice the size on disk for all that is
    not 4-bit, and another checkpoint than a bf16 run makes. The cast happens on the saved files
    (safetensors' own reader and writer), because GPTQModel keeps finished layers on disk while it
    quantizes and checks their dtype when it saves.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out)
    qmodel.save(str(out))
    target = getattr(torch, dtype)
    total = 0
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        tensors = {name: t.to(target) if t.is_floating_point() else t for name, t in tensors.items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, file, metadata=metadata)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = dtype
    config_path.write_text(json.dumps(config, indent=2))
    index = out / "model.safetensors.index.json"
    if index.exists():  # shards: their total size changed
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))


def unpack_int4(packed, dim: int):
    """Unpack int32 words into 8 four-bit values each (lowest bits first), along `dim` (0 or 1)."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    if dim == 0:  # [rows, cols] -> [rows * 8, cols]
        return ((packed.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(-1, packed.shape[1])
    return ((packed.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF).reshape(packed.shape[0], -1)


def folder_bytes(path) -> int:
    """Bytes of all files under `path` (a folder) or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
