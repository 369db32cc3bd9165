"""helpers.quantize: the quiet block with a layer progress bar, int4 unpacking, folder sizes."""

import sys

import pytest

from helpers import quantize
from helpers.errors import CourseError


def test_quiet_progress_keeps_the_output_in_the_log(tmp_path, capsys):
    log = tmp_path / "logs" / "run.log"
    with quantize.quiet_progress(log, layers=3, desc="test"):
        for i in range(3):
            print(f"Quantizing model.layers.{i} ... progress bar frame\r", end="")
        print("done", file=sys.stderr)
    text = log.read_text()
    assert "model.layers.2" in text and "done" in text
    assert "model.layers" not in capsys.readouterr().out  # nothing leaked to the notebook


def test_quiet_progress_advances_the_bar_as_the_log_names_layers(tmp_path, monkeypatch):
    """The bar moves while the block runs (the layer named last is the one in work), full at the
    end."""
    import time

    import tqdm.auto

    seen = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.n = 0

        def update(self, n):
            self.n += n
            seen.append(self.n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    with quantize.quiet_progress(tmp_path / "run.log", layers=4):
        print("Quantizing model.layers.2", flush=True)
        deadline = time.time() + 10
        while not seen and time.time() < deadline:
            time.sleep(0.05)
        assert seen == [2]  # layers 0 and 1 done, layer 2 in work
    assert seen == [2, 4]


def test_quiet_progress_raises_a_course_error_with_the_log_tail(tmp_path):
    import os

    from transformers.utils import logging as hf_logging

    before = (
        sys.stdout,
        hf_logging.is_progress_bar_enabled(),
        {k: os.environ.get(k) for k in quantize.LOGBAR_TEXT},
    )
    with (
        pytest.raises(
            CourseError,
            match=r"(?s)quantizing failed: RuntimeError\('boom'\).*model.layers.0 started",
        ),
        quantize.quiet_progress(tmp_path / "run.log", layers=2),
    ):
        print("model.layers.0 started")
        raise RuntimeError("boom")
    # redirect, Transformers' bars and LogBar's settings as they were
    assert (
        sys.stdout,
        hf_logging.is_progress_bar_enabled(),
        {k: os.environ.get(k) for k in quantize.LOGBAR_TEXT},
    ) == before
    # an interrupt stops the block as it is, not as a CourseError
    with pytest.raises(KeyboardInterrupt), quantize.quiet_progress(tmp_path / "run.log", layers=2):
        raise KeyboardInterrupt
    assert sys.stdout is before[0]


def test_unpack_int4_both_directions():
    import torch

    values = torch.arange(16, dtype=torch.int32).reshape(2, 8)  # two words' worth of 4-bit values

    def pack(row):  # value k in bits 4k..4k+3, read back as a signed int32
        word = sum(v << (4 * k) for k, v in enumerate(row))
        return word - (1 << 32) if word >= 1 << 31 else word

    packed = torch.tensor([pack(row) for row in values.tolist()], dtype=torch.int32)
    along_cols = quantize.unpack_int4(packed.view(2, 1), dim=1)  # [2, 1] -> [2, 8]
    assert torch.equal(along_cols, values)
    along_rows = quantize.unpack_int4(packed.view(1, 2), dim=0)  # [1, 2] -> [8, 2]
    assert torch.equal(along_rows, values.T)


def test_folder_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 5)
    assert quantize.folder_bytes(tmp_path) == 15
    assert quantize.folder_bytes(tmp_path / "a") == 10


def test_awq_search_in_fp32_restores_gptqmodel_and_torch_on_exit():
    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor

    before = (torch.nn.Linear.forward, AWQProcessor._compute_best_clip)
    with quantize.awq_search_in_fp32():
        assert torch.nn.Linear.forward is not before[0]
        linear = torch.nn.Linear(64, 8).to(torch.bfloat16)
        x = torch.randn(32, 64, dtype=torch.bfloat16)
        out = linear(x)  # 32 rows: computed in fp32, returned in bf16
        assert out.dtype == torch.bfloat16
        exact = torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
        assert torch.equal(out, exact.to(torch.bfloat16))
    assert (torch.nn.Linear.forward, AWQProcessor._compute_best_clip) == before


def test_awq_with_fp32_products_makes_a_sound_bf16_checkpoint(tmp_path, course_cache):
    """A tiny Gemma 3 quantized as the course build does (bf16 model, fp32 products): the saved
    checkpoint is bf16 on disk and its logits stay close to the full-precision model's."""
    import json
    import os
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course import models as course_models
    from helpers.awq_gemma3 import gemma3_awq_fixes
    from helpers import kernels

    from .conftest import tiny_gemma3

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    hf = tmp_path / "hf"
    tiny_gemma3(hf, layers=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_cache / "hf" / name, hf / name)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    rows = course_models.calibration_rows(tokenizer, blocks=4, block_tokens=128)
    kernels.import_gptqmodel_quietly()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    config = QuantizeConfig(bits=4, group_size=128, sym=False, quant_method="awq", format="gemm")
    out = tmp_path / "awq"
    with quantize.quiet_progress(tmp_path / "awq.log", layers=2):
        with (
            gemma3_awq_fixes(clip_tokens=32, clip_grid=10, scale_rows=1),
            quantize.awq_search_in_fp32(),
        ):
            model = GPTQModel.load(str(hf), config, dtype=torch.bfloat16)
            model.quantize(rows, batch_size=1, backend=BACKEND.AWQ_TORCH)
        quantize.save_as(model, out, "bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(next(out.glob("*.safetensors")), "pt") as f:
        floats = {
            str(f.get_slice(k).get_dtype())
            for k in f.keys()  # noqa: SIM118 -- safe_open has keys() but is not iterable
            if f.get_slice(k).get_dtype() not in ("I32",)
        }
    assert floats == {"BF16"}
    ids = tokenizer("The history of the printing press begins in Europe", return_tensors="pt")
    with torch.inference_mode():
        ref = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)(**ids).logits
        got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)(**ids).logits.float()
    # bf16 search: 0.27 on this model when this was written; the broken float32-model route: 1.16
    assert float((got - ref).norm() / ref.norm()) < 0.5


def test_awq_scale_search_scores_the_chosen_rows(monkeypatch):
    """scale_rows=N hands AWQ's scale search N calibration rows spread over all of them, with the
    reference output (a tensor, or GPTQModel's list of per-row chunks) and per-row arguments such as
    the attention mask cut the same way, shared ones left whole; restored after."""
    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor

    from helpers.awq_gemma3 import gemma3_awq_fixes

    seen = []

    def recorder(
        self,
        x,
        w_mean,
        x_mean,
        module2inspect,
        linears2scale,
        fp16_output,
        kwargs={},  # noqa: B006 -- stands in for AWQProcessor._compute_best_scale; only read here
    ):
        seen.append(
            (
                x[:, 0, 0].tolist(),
                [float(chunk[0, 0, 0]) for chunk in fp16_output],
                kwargs["attention_mask"][:, 0, 0, 0].tolist(),
                tuple(kwargs["position_embeddings"][0].shape),
            )
        )
        return "scales", 0.0

    monkeypatch.setattr(AWQProcessor, "_compute_best_scale", recorder)
    x = torch.arange(4.0).view(4, 1, 1).expand(4, 3, 2)
    chunks = [x[i : i + 1] * 10 for i in range(4)]
    kwargs = {
        "attention_mask": torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3) * 100,  # per row
        "position_embeddings": (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)),
    }  # shared by all
    with gemma3_awq_fixes(scale_rows=2):
        assert AWQProcessor._compute_best_scale(None, x, None, None, None, [], chunks, kwargs) == (
            "scales",
            0.0,
        )
    AWQProcessor._compute_best_scale(
        None, x, None, None, None, [], chunks, kwargs
    )  # the original again: all rows
    assert seen == [
        ([0.0, 2.0], [0.0, 20.0], [0.0, 200.0], (1, 3, 2)),
        ([0.0, 1.0, 2.0, 3.0], [0.0, 10.0, 20.0, 30.0], [0.0, 100.0, 200.0, 300.0], (1, 3, 2)),
    ]
