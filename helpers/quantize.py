"""Small tools for notebooks 02/03, where you quantize the course model yourself with GPTQModel.

    log = cache / "gptq.log"
    run_quietly(lambda: model.quantize(rows, batch_size=1), log, layers=18, desc="GPTQ")
    unpack_int4(qweight, dim=0)       # 8 four-bit values out of every int32
    folder_bytes(out)                 # size on disk

GPTQModel prints hundreds of progress lines per run; `run_quietly` sends them to a log file and
shows one tqdm bar over the decoder layers instead (parsed from that log, so the bar lives in the
notebook's own thread, where widget updates are reliable).
"""

from __future__ import annotations

import contextlib
import io
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
