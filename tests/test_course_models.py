"""The course-model builder: caching, staleness, interrupted builds, the quality gate, the AWQ
fix."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course import models as course_models
from course.models import CourseModelError

from .conftest import tiny_gemma3


def test_cache_dir_follows_environment(tmp_cache):
    assert course_models.cache_dir() == tmp_cache
    assert course_models.model_path("gguf").parent == tmp_cache / "gguf"
    assert course_models.model_path("awq") == tmp_cache / "awq"


def test_unknown_format_is_a_clear_error(tmp_cache):
    with pytest.raises(CourseModelError, match="choose one of gguf, hf, gptq, awq"):
        course_models.model_path("exl2")


def test_gguf_builds_checks_sha_and_goes_stale_when_recipe_changes(tmp_cache):
    assert course_models.status("gguf") == "missing"
    paths = course_models.ensure(["gguf"], quiet=True)
    gguf = paths["gguf"]
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert gguf.stat().st_size == 253_113_024
    stamp = course_models.read_stamp("gguf")
    assert stamp["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert 10 < stamp["perplexity"] < 60  # a real, coherent model on the held-out text
    assert course_models.status("gguf") == "ready"
    # another library version or input means another recipe: the model is rebuilt, not reused
    stamp["recipe"]["llama-cpp-python"] = "0.0.1"
    (tmp_cache / "gguf" / course_models.STAMP).write_text(json.dumps(stamp))
    assert course_models.status("gguf") == "stale"
    course_models.ensure(["gguf"], quiet=True)
    assert course_models.status("gguf") == "ready"


def test_a_build_says_first_what_it_builds_and_about_how_long(tmp_cache, capsys, monkeypatch):
    monkeypatch.setenv("QLLM_THREADS", "2")
    line = course_models.build_estimate(["hf", "gptq"])
    reference = (
        course_models.REFERENCE_BUILD_SECONDS["hf"] + course_models.REFERENCE_BUILD_SECONDS["gptq"]
    )
    assert "hf, gptq" in line and f"({reference} s on the course's 2-core reference CPU)" in line
    monkeypatch.setenv("QLLM_THREADS", "1")  # half the cores, twice the time
    assert f"roughly {round(2 * reference / 60)} min with 1 core " in course_models.build_estimate(
        ["hf", "gptq"]
    )
    course_models.ensure(["gguf"])
    assert capsys.readouterr().out.startswith("Building the course model gguf (once per machine")
    course_models.ensure(["gguf"])  # nothing to build: nothing said
    assert "Building" not in capsys.readouterr().out


def test_killed_build_is_detected_and_never_used(tmp_cache):
    """kill -9 of the builder alone, mid-build: its child dies with it, the half-made folder is
    never used, and the next build writes into a folder of its own."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "course.models", "build", "--formats", "gguf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while (
        not list(tmp_cache.glob(f"gguf.partial-*/{course_models.GGUF_FILENAME}"))
        and time.time() < deadline
    ):
        time.sleep(0.05)
    [first] = tmp_cache.glob("gguf.partial-*")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the build runs in a child process"
    proc.kill()  # SIGKILL to the builder only, as `kill -9 PID` does
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"the build's child outlived its parent: {alive}"
    assert not (tmp_cache / "gguf").exists(), "a half-made model must never be in place"
    assert course_models.status("gguf") == "interrupted"
    assert course_models.info_rows()[0]["status"] == "interrupted"
    course_models.ensure(["gguf"], quiet=True)
    assert course_models.status("gguf") == "ready"
    assert not first.exists() and not list(tmp_cache.glob("gguf.partial*"))


def test_each_build_gets_its_own_folder(tmp_cache, monkeypatch):
    """Two builds of one format never share a folder, so a stray writer cannot mix files into a
    build."""
    folders = []

    def fake_child(argv, stdout, stderr, env):
        out = Path(argv[-1])
        folders.append(out)
        (out / "build-result.json").write_text(json.dumps({"perplexity": 20.0}))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(course_models.subprocess, "run", fake_child)
    course_models._build("gguf")
    course_models._build("gguf")
    assert len(folders) == 2 and folders[0] != folders[1]
    assert all(f.name.startswith("gguf.partial-") for f in folders)
    assert course_models.read_stamp("gguf")["perplexity"] == 20.0 and not list(
        tmp_cache.glob("gguf.partial*")
    )


def test_calibration_rows_are_equal_length_and_start_with_bos(course_cache):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(course_models.model_dir("hf"))
    rows = course_models.calibration_rows(tokenizer)
    assert len(rows) == course_models.CALIBRATION_BLOCKS
    assert {len(r["input_ids"]) for r in rows} == {course_models.BLOCK_TOKENS}
    assert all(r["input_ids"][0] == tokenizer.bos_token_id for r in rows)
    assert len({tuple(r["input_ids"]) for r in rows}) == len(
        rows
    )  # spread over the text, no repeats


def test_calibration_and_heldout_texts_do_not_overlap():
    from importlib import resources

    from helpers.quality import heldout_text

    calibration = (
        resources.files("helpers").joinpath("data", "calibration.txt").read_text(encoding="utf-8")
    )
    for paragraph in heldout_text("en").split("\n\n"):
        for sentence in paragraph.split(". "):
            if len(sentence) > 40:
                assert sentence not in calibration
    chinese = [s for s in re.split("[。；]", heldout_text("zh")) if len(s) > 12]
    assert len(chinese) > 20 and not [s for s in chinese if s.strip() in calibration]
    # and no shared run of 12 characters anywhere: a copied clause would show up here
    zh = heldout_text("zh")
    assert not {zh[i : i + 12] for i in range(len(zh) - 12)} & {
        calibration[i : i + 12] for i in range(len(calibration) - 12)
    }


def test_built_models_record_recipe_and_pass_quality_gate(course_cache):
    fp = course_models.read_stamp("hf")["perplexity"]
    for fmt in course_models.FORMATS:
        stamp = course_models.read_stamp(fmt)
        assert stamp["recipe"] == course_models.recipe(fmt)
        assert stamp["perplexity"] <= course_models.QUALITY_GATE * fp
    assert course_models.read_stamp("awq")["recipe"]["gptqmodel"] == "7.6.0"
    config = json.loads((course_models.model_dir("gptq") / "config.json").read_text())
    assert "offload_to_disk_path" not in json.dumps(config)  # no random temp path in the checkpoint


def test_reference_is_off_the_q4_k_m_grid(course_cache):
    """The fair reference (issue 16): the shipped Q4_K_M computes what hf computes, while Q4_K_M
    made from hf pays a real quantization cost. Were hf still on the shipped file's grid, both would
    be ~1.00."""
    ppl = {
        fmt: course_models.read_stamp(fmt)["perplexity"] for fmt in ("gguf", "hf", "gguf-from-hf")
    }
    shipped, requantized = ppl["gguf"] / ppl["hf"], ppl["gguf-from-hf"] / ppl["hf"]
    assert abs(shipped - 1) < 0.01, shipped  # the rescaling kept the model's outputs
    assert requantized - shipped > 0.03, (
        requantized,
        shipped,
    )  # and moved its weights off the grid


def test_info_command_lists_all_formats_with_measured_figures(course_cache):
    out = subprocess.run(
        [sys.executable, "-m", "course.models", "info"], capture_output=True, text=True, check=True
    ).stdout
    for fmt in course_models.FORMATS:
        line = next(row for row in out.splitlines() if row.startswith(fmt + " "))
        assert "ready" in line
        assert "-" not in line.split()[2:5]  # size, perplexity and ratio are all filled


def test_quality_gate_rejects_a_bad_checkpoint_and_installs_nothing(
    tmp_cache, course_cache, monkeypatch
):
    """A tiny random model scores far worse than the (faked) fp reference: the build must fail."""
    hf = tmp_cache / "hf"
    tiny_gemma3(hf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_cache / "hf" / name, hf / name)
    (hf / course_models.STAMP).write_text(json.dumps({"perplexity": 20.0, "recipe": {}}))
    with pytest.raises(CourseModelError) as err:
        course_models._build("gptq")
    message = str(err.value)
    assert "gptq" in message and "quality gate" in message
    assert not (tmp_cache / "gptq").exists()
    assert not list(tmp_cache.glob("gptq.partial*"))


def test_awq_norm_fold_is_exact_even_for_extreme_scales():
    """Folding AWQ scales into a Gemma 3 (1 + w) norm must not change the layer's output."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP, Gemma3RMSNorm

    from helpers.awq_gemma3 import fold_scales_into_gemma_norm

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        hidden_size=128, intermediate_size=256, hidden_activation="gelu_pytorch_tanh"
    )
    norm, mlp = Gemma3RMSNorm(128).to(torch.bfloat16), Gemma3MLP(config).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(128) * 3)
        norm.weight[5] = -1.0  # a dead channel: gain exactly 0
    live = (1 + norm.weight.float()) != 0
    x = torch.randn(4, 16, 128, dtype=torch.bfloat16)
    before = mlp(norm(x)).float()
    # scales like the ones GPTQModel produced for the real model: spread over 6 decades
    scales = torch.exp(torch.randn(128) * 3).to(torch.bfloat16)
    fold_scales_into_gemma_norm(norm, [mlp.gate_proj, mlp.up_proj], scales)
    after = mlp(norm(x)).float()
    assert torch.isfinite(after).all()
    rel = ((after - before).norm() / before.norm()).item()
    assert rel < 0.02, f"fold changed the output by {rel:.1%}"
    assert ((1 + norm.weight.float()).abs()[live] >= 0.99).all()  # no live gain folded to near 0


def test_awq_fixes_are_undone_on_exit():
    import gptqmodel.models.auto as auto
    import gptqmodel.quantization.awq.quantize.scale as scale

    from helpers.awq_gemma3 import gemma3_awq_fixes

    before = (auto.MODEL_MAP["gemma3_text"], scale.scale_ln_fcs)
    with gemma3_awq_fixes():
        assert auto.MODEL_MAP["gemma3_text"] is not before[0]
        assert "pre_feedforward_layernorm" in str(auto.MODEL_MAP["gemma3_text"].module_tree)
    assert (auto.MODEL_MAP["gemma3_text"], scale.scale_ln_fcs) == before


def test_hf_build_parses_the_gguf_once(tmp_path, small_gguf):
    """Transformers opens a new gguf.GGUFReader for the config, the tokenizer and the weights;
    inside the hf build they share one (each parse walks a 262k vocabulary), and GGUFReader is
    itself again after."""
    import gguf

    path = tmp_path / "small.gguf"
    path.write_bytes(small_gguf)
    original = gguf.GGUFReader
    with course_models._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert isinstance(first, original) and first.fields
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first


@pytest.mark.parametrize("fmt", ["hf", "gptq", "awq"])
def test_tokenizer_config_lists_the_added_tokens_and_changes_nothing(course_cache, tmp_path, fmt):
    """The build writes the added tokens into tokenizer_config.json (so Transformers need not
    re-parse tokenizer.json to find them); a copy without them tokenizes every text exactly
    alike."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from helpers import quality

    folder = course_cache / fmt
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    listed = {int(i): token["content"] for i, token in config["added_tokens_decoder"].items()}
    in_file = {
        t["id"]: t["content"]
        for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    }
    assert listed == in_file
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        if (folder / name).exists():
            shutil.copy(folder / name, plain / name)
    del config["added_tokens_decoder"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    built, rebuilt = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(plain)
    assert (
        type(built) is type(rebuilt) and built.added_tokens_decoder == rebuilt.added_tokens_decoder
    )
    for text in (
        quality.heldout_text("en"),
        quality.heldout_text("zh"),
        "a <end_of_turn> b <start_of_turn>user\n<pad>",
    ):
        for kwargs in ({}, {"add_special_tokens": False}, {"split_special_tokens": True}):
            assert built(text, **kwargs)["input_ids"] == rebuilt(text, **kwargs)["input_ids"]


def test_the_build_refuses_to_start_on_a_disk_too_small(tmp_cache, monkeypatch):
    """Before anything is written: one line with the space needed, the space free, and where."""
    monkeypatch.setattr(course_models, "free_disk_bytes", lambda path: 700 * 10**6)
    started = []
    monkeypatch.setattr(course_models, "_build", lambda fmt: started.append(fmt))
    with pytest.raises(CourseModelError) as caught:
        course_models.ensure(["gptq"], quiet=True)
    message = str(caught.value)
    assert "\n" not in message
    need = course_models.human_size(
        int(sum(course_models.BUILD_BYTES[f] for f in ("gguf", "hf", "gptq")) * 1.1)
    )
    assert f"needs about {need} of free disk in {tmp_cache}" in message
    assert "and 700.0 MB is free there" in message
    assert "QLLM_CACHE_DIR" in message
    assert started == []  # nothing was built
    assert not any(tmp_cache.glob("*.partial-*"))


def test_the_build_starts_when_the_disk_holds_it(tmp_cache):
    need = int(course_models.BUILD_BYTES["gguf"] * course_models.DISK_MARGIN)
    course_models.check_build_disk(["gguf"], free_bytes=need)  # exactly enough: no error
    with pytest.raises(CourseModelError, match="needs about"):
        course_models.check_build_disk(["gguf"], free_bytes=need - 1)
