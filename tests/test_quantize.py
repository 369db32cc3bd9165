"""helpers.quantize: the quiet runner with a layer progress bar, int4 unpacking, folder sizes."""

import sys

import pytest

from helpers import quantize
from helpers.errors import CourseError


def test_run_quietly_returns_the_result_and_keeps_the_output_in_the_log(tmp_path, capsys):
    def work():
        for i in range(3):
            print(f"Quantizing model.layers.{i} ... progress bar frame\r", end="")
        print("done", file=sys.stderr)
        return 42

    log = tmp_path / "logs" / "run.log"
    assert quantize.run_quietly(work, log, layers=3, desc="test") == 42
    text = log.read_text()
    assert "model.layers.2" in text and "done" in text
    assert "model.layers" not in capsys.readouterr().out  # nothing leaked to the notebook


def test_run_quietly_raises_a_course_error_with_the_log_tail(tmp_path):
    def work():
        print("model.layers.0 started")
        raise RuntimeError("boom")

    with pytest.raises(CourseError, match=r"(?s)quantizing failed: RuntimeError\('boom'\).*model.layers.0 started"):
        quantize.run_quietly(work, tmp_path / "run.log", layers=2)
    assert sys.stdout is sys.__stdout__ or "pytest" in type(sys.stdout).__module__  # redirect undone


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
