"""Quantizing the course model yourself with GPTQModel (notebooks 02/03, and the course build).

    # GPTQModel's output -> log, one tqdm bar by layer
    with quiet_progress(log, layers=18, desc="GPTQ"):
        model = GPTQModel.load(str(path), config)
        model.quantize(rows, batch_size=1)
        # a checkpoint in bf16, whatever the dtype it was quantized in
        save_as(model, out, "bfloat16")
    with awq_search_in_fp32(): ...        # AWQ's search arithmetic in fp32 on a bf16 model
    unpack_int4(qweight, dim=0)           # 8 four-bit values out of every int32
    folder_bytes(out)                     # size on disk

GPTQModel prints hundreds of progress lines per run; `quiet_progress` sends them to a log file and
shows one tqdm bar over the decoder layers instead, advanced as the log names the layer in work.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
from pathlib import Path

from .errors import CourseError
from .precision import products_in_fp32

_LAYER = re.compile(rb"model\.layers\.(\d+)")
# GPTQModel's LogBar draws no progress in Jupyter (it counts a notebook as headless): the log then
# names no layer and the bar stands still until the end. These make it write its progress lines, as
# in a terminal.
LOGBAR_TEXT = {"LOGBAR_DISABLE_NOTEBOOK_DETECTION": "1", "LOGBAR_FORCE_PROGRESS": "1"}


@contextlib.contextmanager
def quiet_progress(log_path, layers: int | None = None, desc: str = "quantizing"):
    """Inside the block, stdout/stderr go to `log_path` and a bar counts `layers`; an exception
    comes out as a CourseError with the log's last lines."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=layers, desc=desc, unit="layer", disable=not layers
    )  # created first: keeps the real stderr
    stop, done, failure = threading.Event(), 0, None

    def follow(
        reader,
    ):  # a thread, as the block runs in the caller's: the layer named last is the one in work
        nonlocal done
        while not stop.wait(0.5):
            found = [int(m) for m in _LAYER.findall(reader.read())]
            if found and layers and min(max(found), layers) > done:
                bar.update(min(max(found), layers) - done)
                done = min(max(found), layers)

    logbar_before = {name: os.environ.get(name) for name in LOGBAR_TEXT}
    os.environ.update(LOGBAR_TEXT)
    hf_bars = hf_logging.is_progress_bar_enabled()
    # the save's "Writing model shards": a widget of its own in Jupyter
    hf_logging.disable_progress_bar()
    try:
        with open(log_path, "wb", buffering=0) as raw, open(log_path, "rb") as reader:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)
            watcher = threading.Thread(target=follow, args=(reader,), daemon=True)
            try:
                with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                    watcher.start()
                    yield
            except Exception as err:  # raised again below, once the log is complete
                failure = err
            finally:
                stop.set()
                watcher.join()
                text.flush()
                text.detach()  # leave closing the file to `raw`
        if failure is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])[-3000:]
            raise CourseError(
                f"{desc} failed: {failure!r}. Full log: {log_path}\n--- last lines ---\n{tail}"
            ) from failure
        if layers:
            bar.update(layers - done)
    finally:
        bar.close()
        if hf_bars:
            hf_logging.enable_progress_bar()
        for name, value in logbar_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def awq_search_in_fp32():
    """Run the matrix products of GPTQModel 7.6.0's AWQ in float32 on a bf16 model.

    AWQ multiplies thousands of calibration rows by each layer: to capture its inputs, once per
    candidate scale (20 of them) and per clipping threshold. That is many-row work, several times
    slower in bf16 than in fp32 on a CPU without native bf16 (helpers/precision.py). The model
    stays bf16, as GPTQModel's AWQ expects (its CPU AWQ kernel packs 16-bit layers only, and a
    float32 model came out worse); while the block runs, an nn.Linear given 16 or more bf16 rows
    on the CPU multiplies them in fp32 (`precision.products_in_fp32`), and the clip search gets
    fp32 copies of its weights and inputs.
    """
    from gptqmodel.looper.awq_processor import AWQProcessor

    original_clip = AWQProcessor._compute_best_clip

    def compute_best_clip(self, w, input_feat, *args, **kwargs):
        return original_clip(self, w.float(), input_feat.float(), *args, **kwargs).to(w.dtype)

    AWQProcessor._compute_best_clip = compute_best_clip
    try:
        with products_in_fp32(min_rows=16):
            yield
    finally:
        AWQProcessor._compute_best_clip = original_clip


def save_as(qmodel, out, dtype: str = "bfloat16") -> None:
    """Save a GPTQModel-quantized model, then store its float tensors (embedding, norms, scales) in
    `dtype`.

    A model quantized in float32 is saved in float32 otherwise: twice the size on disk for all that
    is not 4-bit, and another checkpoint than a bf16 run makes. The cast happens on the saved files
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
            tensors = {
                name: handle.get_tensor(name)
                for name in handle.keys()  # noqa: SIM118 - a safe_open handle is not iterable
            }
        tensors = {
            name: t.to(target) if t.is_floating_point() else t for name, t in tensors.items()
        }
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
