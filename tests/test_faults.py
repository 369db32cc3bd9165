"""Bad input, faults and safe defaults across the helpers: the matrix of issue 10, one row at a
time.

Each test asserts the message a learner sees (what went wrong + what to do) and that nothing is
left half-written looking complete. Nothing is downloaded: the models are the course's own or a
tiny random Gemma 3, the hub is the course's local hub server, and course-model builds run in a
temporary QLLM_CACHE_DIR.

The matrix, one entry per fault: its row and the fault, the test(s), and what the learner sees
(the start of it).

1   path that does not exist
    test: test_row1_a_path_that_does_not_exist
    sees: "<path> does not exist. Build the course models with ..."
1   folder / file that is not a model
    test: test_row1_a_folder_or_file_that_is_not_a_model
    sees: "<path> is a folder but not a model folder: it has no config.json. ..."
2   .gguf with the wrong magic
    test: test_row2_a_gguf_with_the_wrong_magic
    sees: "<path> is not a GGUF file: it starts with b'<!DO' (an HTML page ...) ..."
2   truncated .gguf
    test: test_row2_a_truncated_gguf
    sees: "<path> is truncated: ... download the file again ..."
3   GPTQ/AWQ without gptqmodel
    test: test_row3_gptq_awq_without_gptqmodel
    sees: "This is a GPTQ checkpoint; Transformers 5 loads GPTQ through GPTQModel ..."
3   gptqmodel installed but broken
    test: test_row3_gptqmodel_that_fails_to_import
    sees: "... gptqmodel is installed but fails to import ..."
3   compressed-tensors without its package
    test: test_loading.py::test_compressed_tensors_without_its_package_is_one_clear_line
    sees: "This is a compressed-tensors checkpoint (llm-compressor's format); ...
          pip install compressed-tensors==0.20.1 ..."
4   model larger than free RAM / VRAM
    test: test_row4_too_big_for_free_ram_or_vram
    sees: "Not loading <name>: it needs about X GiB of RAM (...),
          and only Y GiB is free on cpu. ..."
5   prompt + max_new_tokens > window (both)
    test: test_row5_context_window_transformers / _llama_cpp / _streaming
    sees: "The prompt is N tokens but ..."
6   download cut mid-file
    test: test_row6_a_download_cut_mid_file
    sees: "The transfer from <endpoint> broke and did not recover ..."
6   download arrives corrupted
    test: test_row6_a_corrupted_download_is_deleted
    sees: "model.safetensors has the wrong sha256 (...); it was deleted ..."
6   unreachable endpoint
    test: test_row6_an_unreachable_endpoint
    sees: "Cannot reach http://127.0.0.1:<port> (...). HF_ENDPOINT is set to ..."
6   wrong repo / file name
    test: test_row6_a_wrong_repo_or_file_name
    sees: "No repo 'me/tinny' at ... Check the spelling ..."
6   not enough disk
    test: test_row6_not_enough_disk
    sees: "Not downloading me/tiny: the 4 chosen file(s) need ... and only ... is free ..."
7   corrupt or empty chat history
    test: test_row7_a_damaged_history_file
    sees: "<path> is not a usable chat history (...); it is kept as <path>.corrupt-...
          Starting a fresh history."
7   save to an unwritable path
    test: test_row7_a_failed_save_keeps_the_old_file
    sees: "Cannot save the chat to <path>: ... The old file is unchanged. ..."
8   interrupted course-model build
    test: test_row8_an_interrupted_build_is_detected_and_rebuilt (+ _real_gguf_)
    sees: status "interrupted"; "<path> does not exist. Build the course models ..."
9   trust_remote_code
    test: test_row9_trust_remote_code_off_unless_asked
    sees: "... The course keeps trust_remote_code=False. ..."
          / warning "trust_remote_code=True: ..."
9   pickle weights
    test: test_row9_safetensors_only_unless_allow_pickle
    sees: "<path> has only pickle weights (*.bin/*.pt), which can run code ..."
          / warning "allow_pickle=True: ..."
9   HF token never shown
    test: test_row9_token_never_printed_by_the_hub_helpers,
          test_row9_token_never_in_the_executed_notebook_01
    sees: "token": "set (hidden)"
10  server stopped when the code using it fails
    test: test_row10_server_stops_when_the_with_body_raises,
          test_row10_server_dies_with_its_owner
    sees: (no message: pid gone, port closed)
+   property: GGUF header check
    test: test_property_gguf_header_check_*
+   property: history trimming
    test: test_property_trim_history
"""

import builtins
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course import models as course_models
from helpers import serving
from helpers import (
    chat,
    downloading,
    errors,
    generation,
    gguf_tools,
    hub,
    loading,
    memory,
    model_info,
    streaming,
)
from helpers.errors import CourseError
from helpers.errors import (
    ContextOverflowError,
    ContextTruncationWarning,
    NotGGUFError,
    TruncatedGGUFError,
)
from helpers.errors import (
    MissingBackendError,
    ModelNotFoundError,
    NotAModelError,
    NotEnoughMemoryError,
)

from .hub_support import point_at

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
FAKE_TOKEN = "hf_FAKEtoken1234567890abcdef"
QUICK = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def files_under(path: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        if path.exists()
        else []
    )


def must_not_run(what):
    def call(*args, **kwargs):
        raise AssertionError(f"{what} was called although the input was refused")

    return call


def closed_port() -> int:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_folder):
    return loading.load_model(tiny_folder, device="cpu")


@pytest.fixture(scope="module")
def gguf_lm(course_cache):
    lm = loading.load_model(course_models.model_path("gguf"), n_ctx=256, n_threads=2)
    yield lm
    lm.model.close()


@pytest.fixture(scope="module")
def gguf_header_bytes(course_cache) -> bytes:
    """The course GGUF up to its tensor data: all the header check reads."""
    path = course_models.model_path("gguf")
    with open(path, "rb") as handle:
        return handle.read(gguf_tools.read_gguf(path).data_offset)


WEIGHTS = os.urandom(12 * 2**20)  # > huggingface_hub's first write chunk


@pytest.fixture(scope="module")
def tiny_hub():
    from course.local_hub import LocalHub, Repo, RepoEntry

    def repo(repo_id, files):
        return Repo(repo_id, {name: RepoEntry(name, data) for name, data in files.items()})

    config = json.dumps(
        {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 1000,
        }
    ).encode()
    repos = {
        "me/tiny": repo(
            "me/tiny",
            {
                "config.json": config,
                "model.safetensors": WEIGHTS,
                "tokenizer.json": b'{"version": "1.0"}',
                "README.md": b"# tiny\n",
            },
        ),
        "me/pickle-only": repo(
            "me/pickle-only", {"config.json": config, "pytorch_model.bin": b"\x80\x04pickle"}
        ),
    }
    with LocalHub(repos) as server:
        yield server


@pytest.fixture
def hub_env(tiny_hub, tmp_path, monkeypatch):
    yield point_at(tiny_hub, tmp_path, monkeypatch)
    tiny_hub._switches.clear()


# ---- row 1: a path that does not exist; a folder that is not a model -----------------------------


def test_row1_a_path_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in (tmp_path / "models" / "gemma.gguf", "./my-model", "my-model"):
        with pytest.raises(ModelNotFoundError) as err:
            loading.load_model(missing)
        assert str(err.value).endswith(
            "does not exist. Build the course models with `python -m course.models build`, "
            "download a model (notebook 01), or check the spelling of the path."
        )
    assert files_under(tmp_path) == []


def test_row1_a_folder_or_file_that_is_not_a_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        NotAModelError,
        match=r"is a folder but not a model folder: it has no config\.json\. "
        r"A Transformers model folder holds config\.json plus \*\.safetensors",
    ):
        loading.load_model(empty)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(
        NotAModelError,
        match=r"has a config\.json but no weights \(\*\.safetensors\)\. "
        r"Is the download complete\?",
    ):
        loading.load_model(no_weights)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(
        NotAModelError, match=r"config\.json is not valid JSON .*the download may be incomplete"
    ):
        loading.load_model(broken)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(
        NotAModelError,
        match=r"is a file but not a \.gguf model \(it starts with b'hell'\)\. "
        r"Pass a \.gguf file, or the folder that holds config\.json",
    ):
        loading.load_model(notes)
    assert files_under(tmp_path) == ["broken/config.json", "no-weights/config.json", "notes.txt"]


# ---- row 2: a .gguf that is not GGUF; a truncated one --------------------------------------------


def test_row2_a_gguf_with_the_wrong_magic(tmp_path, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "Llama", must_not_run("llama_cpp.Llama"))
    html = tmp_path / "model.gguf"  # what a failed download often leaves: an HTML error page
    html.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(NotGGUFError) as err:
        loading.load_model(html)
    assert str(err.value) == (
        f"{html} is not a GGUF file: it starts with b'<!DO', a GGUF file starts with b'GGUF'. It "
        "looks like an HTML/XML page (a login or error page saved instead of the model?). Download "
        "the .gguf file again (notebook 01) or pick the right file."
    )
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(NotGGUFError) as err:
        loading.load_model(empty)
    assert str(err.value) == (
        f"{empty} is empty (0 bytes): the download or copy failed. Download it again (notebook 01)."
    )
    with pytest.raises(NotAModelError, match="not a GGUF file"):
        loading.check_gguf_header(html)


def test_row2_a_truncated_gguf(tmp_path, gguf_header_bytes, course_cache, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "Llama", must_not_run("llama_cpp.Llama"))
    size = course_models.model_path("gguf").stat().st_size
    cut = (
        tmp_path / "cut.gguf"
    )  # the header whole, the tensor data cut at 60% (sparse zeros, never read)
    with open(cut, "wb") as handle:
        handle.write(gguf_header_bytes)
        handle.truncate(size * 6 // 10)
    with pytest.raises(
        TruncatedGGUFError,
        match=rf"is truncated: .*236 tensors.*ends at byte {size:,}.*"
        rf"only {size * 6 // 10:,} bytes.*download the file again",
    ):
        loading.load_model(cut)
    cut.write_bytes(gguf_header_bytes[:3_000_000])  # cut inside the vocabulary
    with pytest.raises(TruncatedGGUFError, match=r"header runs past the end of the file"):
        loading.load_model(cut)


# ---- row 3: a GPTQ/AWQ checkpoint without gptqmodel ----------------------------------------------


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_row3_gptq_awq_without_gptqmodel(course_cache, monkeypatch, fmt):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_run("from_pretrained"))
    monkeypatch.setitem(
        sys.modules, "gptqmodel", None
    )  # `import gptqmodel` fails; find_spec finds nothing
    with pytest.raises(MissingBackendError) as err:
        loading.load_model(course_models.model_path(fmt), device="cpu")
    message = str(err.value)
    assert message.startswith(
        f"This is a {fmt.upper()} checkpoint; Transformers 5 loads {fmt.upper()} through GPTQModel"
    )
    assert "gptqmodel is not installed" in message and "NameError: name 'QuantizeConfig'" in message
    assert "pip install gptqmodel==7.6.0" in message and "restart the kernel" in message


def test_row3_gptqmodel_that_fails_to_import(course_cache, monkeypatch):
    """Installed (find_spec sees it) but broken, e.g. built against another torch."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_run("from_pretrained"))
    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name == "gptqmodel" or name.startswith("gptqmodel."):
            raise ImportError("libtorch_cpu.so: undefined symbol: _ZN3c104impl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken_import)
    assert importlib.util.find_spec("gptqmodel") is not None
    with pytest.raises(
        MissingBackendError,
        match=r"gptqmodel is installed but fails to import \(ImportError: "
        r"libtorch_cpu\.so.*pip install --force-reinstall gptqmodel",
    ):
        loading.load_model(course_models.model_path("gptq"), device="cpu")


# ---- row 4: bigger than the free RAM / VRAM: refused before loading, with the numbers ------------


@pytest.mark.parametrize("fmt, device", [("hf", "cpu"), ("gguf", "cpu"), ("gptq", "cuda:0")])
def test_row4_too_big_for_free_ram_or_vram(course_cache, monkeypatch, fmt, device):
    import llama_cpp
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_run("from_pretrained"))
    monkeypatch.setattr(llama_cpp, "Llama", must_not_run("llama_cpp.Llama"))
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device="cpu": 200 * 2**20)
    if device.startswith("cuda"):  # as on a GPU machine: the check uses the GPU's free memory
        import torch

        monkeypatch.setattr(loading, "pick_device", lambda device="auto": "cuda:0")
        monkeypatch.setattr(
            torch.cuda, "get_device_capability", lambda device=None: (8, 6)
        )  # for the dtype rule
    path = course_models.model_path(fmt)
    need = memory.estimate_memory_bytes(path, fmt)
    weights = f"{memory.weights_bytes(path) / GIB:.2f} GiB of weights"
    overhead = "+ 20% + 300 MiB overhead" if fmt == "gguf" else "+ 50% + 600 MiB overhead"
    repacked = memory.repacked_bytes(model_info.gguf_header(path)) if fmt == "gguf" else 0
    if repacked:  # llama.cpp's copy of the Q4 weights it repacks, on this CPU
        weights += f" mapped from the file + {repacked / GIB:.2f} GiB of them repacked by llama.cpp"
        weights += " into a copy"
    where = "GPU memory" if device.startswith("cuda") else "RAM"
    with pytest.raises(NotEnoughMemoryError) as err:
        loading.load_model(path, device=device)
    assert str(err.value) == (
        f"Not loading {path.name}: it needs about {need / GIB:.1f} GiB of {where} "
        f"({weights} {overhead}), and only 0.2 GiB is free on {device}. "
        "Close other notebooks or kernels, choose a smaller model or a 4-bit one (GGUF Q4_K_M, "
        "GPTQ or AWQ), or pass check_memory=False if you know better."
    )


# ---- row 5: prompt + max_new_tokens over the context window, both backends ----------------------


def _spy_generate(lm, monkeypatch) -> dict:
    seen = {}
    real = lm.model.generate

    def spy(*args, **kwargs):
        seen["max_new_tokens"] = kwargs["max_new_tokens"]
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", spy)
    return seen


def test_row5_context_window_transformers(tiny_lm, monkeypatch):
    assert tiny_lm.context_length == 1024
    seen = _spy_generate(tiny_lm, monkeypatch)
    too_long = "word " * 1100
    n = len(tiny_lm.tokenizer(too_long)["input_ids"])
    with pytest.raises(ContextOverflowError) as err:
        generation.generate(tiny_lm, too_long, max_new_tokens=8)
    assert str(err.value) == (
        f"The prompt is {n:,} tokens but tiny-gemma3 has a 1,024-token context window "
        "(max_position_embeddings in its config.json), so nothing is left for the answer. Shorten "
        "the prompt (or trim the chat history), or use a model with a longer context window."
    )
    assert seen == {}  # refused before generating
    near = "word " * 1000
    n = len(tiny_lm.tokenizer(near)["input_ids"])
    with pytest.warns(
        ContextTruncationWarning,
        match=rf"prompt \({n:,} tokens\) \+ max_new_tokens \(100\) exceed "
        rf"the 1,024-token context window of tiny-gemma3: the answer "
        rf"will stop after {1024 - n} tokens",
    ):
        generation.generate(tiny_lm, near, max_new_tokens=100)
    assert seen["max_new_tokens"] == 1024 - n  # never past the window
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits: no warning at all
        generation.generate(tiny_lm, "The capital of France is", max_new_tokens=2)


def test_row5_context_window_llama_cpp(gguf_lm, monkeypatch):
    too_long = "Quantization stores each weight in fewer bits. " * 40  # ~360 tokens > n_ctx 256
    calls, outputs = [], []
    real = gguf_lm.model.create_completion

    def spy(*args, **kwargs):
        calls.append(kwargs)
        outputs.append(real(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(gguf_lm.model, "create_completion", spy)
    with pytest.raises(
        ContextOverflowError,
        match=r"^The prompt is \d+ tokens but the model was created with "
        r"n_ctx=256, so nothing is left for the answer \(llama-cpp-python "
        r"would raise 'Requested tokens exceed context window'\)\. Load "
        r"it with n_ctx >= 512 \(load_model\(path, n_ctx=\.\.\.\) or "
        r"Llama\(\.\.\., n_ctx=\.\.\.\); prompt \+ 8 new tokens\), or "
        r"shorten the prompt\.$",
    ):
        generation.generate(gguf_lm, too_long, max_new_tokens=8)
    assert calls == []  # refused before llama.cpp saw it
    near = "Quantization stores each weight in fewer bits. " * 22  # ~200 tokens
    n = len(generation.encode_prompt(gguf_lm, near))
    assert 156 < n < 256  # prompt + 100 new tokens do not fit, the prompt alone does
    with pytest.warns(
        ContextTruncationWarning,
        match=rf"^prompt \({n} tokens\) \+ max_tokens \(100\) exceed n_ctx=256: the answer will "
        rf"stop after {256 - n} tokens with finish_reason='length'\. Load the model with "
        r"n_ctx >= 512",
    ):
        text = generation.generate(gguf_lm, near, max_new_tokens=100)
    # llama.cpp was asked for what is left of n_ctx, and wrote all of it: the answer the warning
    # announced, returned as llama.cpp gave it
    assert len(calls) == 1 and calls[0]["max_tokens"] == 256 - n
    out = outputs[0]
    assert out["usage"] == {"prompt_tokens": n, "completion_tokens": 256 - n, "total_tokens": 256}
    assert out["choices"][0]["finish_reason"] == "length"
    assert text == out["choices"][0]["text"] and text.strip()


def test_row5_context_window_streaming(tiny_lm, gguf_lm):
    for lm, prompt in (
        (tiny_lm, "word " * 1100),
        (gguf_lm, "Quantization stores each weight in fewer bits. " * 40),
    ):
        with pytest.raises(ContextOverflowError, match="The prompt is"):
            list(streaming.TokenStream(lm, prompt, max_new_tokens=4))
        stream = streaming.TokenStream(lm, "Hello", max_new_tokens=1)
        list(stream)  # the model is free again: this one streams its token
        result = stream.result
        assert result.new_tokens == 1 and not result.stopped_by_user
        assert result.prompt_tokens == len(generation.encode_prompt(lm, "Hello"))
        # the greedy token generate() gives too, and it is text (not an end-of-sequence)
        assert result.text == generation.generate(lm, "Hello", max_new_tokens=1) != ""


# ---- row 6: downloads ---------------------------------------------------------------------------


def test_row6_a_download_cut_mid_file(hub_env, tmp_path):
    hub_env.cut_next_transfer(5 * 2**20, path="model.safetensors")  # one cut: resumed, checked
    got = downloading.download_file(
        "me/tiny", "model.safetensors", local_dir=tmp_path / "ok", quiet=True
    )
    assert got.verified and got.path.read_bytes() == WEIGHTS
    hub_env.cut_next_transfer(0, path="model.safetensors", times=50)  # every attempt dies
    with pytest.raises(
        errors.DownloadFailedError,
        match=r"^The transfer from http://127\.0\.0\.1:\d+ broke and did "
        r"not recover .*Nothing incomplete was kept as if complete; "
        r"run the download again\.$",
    ):
        downloading.download_file(
            "me/tiny", "model.safetensors", local_dir=tmp_path / "dl", quiet=True
        )
    assert not (tmp_path / "dl" / "model.safetensors").exists()
    assert hub.find_incomplete(tmp_path / "dl") == []


def test_row6_a_corrupted_download_is_deleted(tmp_path, monkeypatch):
    from course.local_hub import LocalHub, Repo, RepoEntry

    bad = RepoEntry(
        "model.safetensors", WEIGHTS[: 2**20], _sha256="0" * 64
    )  # bytes and listed sha disagree
    with LocalHub({"me/corrupt": Repo("me/corrupt", {"model.safetensors": bad})}) as server:
        point_at(server, tmp_path, monkeypatch)
        with pytest.raises(
            errors.DownloadFailedError,
            match=r"model\.safetensors has the wrong sha256 .*it was "
            r"deleted so that nothing broken looks complete",
        ):
            downloading.download("me/corrupt", local_dir=tmp_path / "dl", quiet=True)
    assert not (tmp_path / "dl" / "model.safetensors").exists()


def test_row6_an_unreachable_endpoint(hub_env, tmp_path, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: downloading.download("me/tiny", local_dir=tmp_path / "dl"),
        lambda: loading.load_model("me/tiny"),
    ):
        with pytest.raises(errors.HubUnreachableError) as err:
            call()
        assert f"Cannot reach http://127.0.0.1:{port} (" in str(err.value)
        assert (
            f"HF_ENDPOINT is set to http://127.0.0.1:{port}: is that mirror up, and are its scheme "
            "and port right? Unset HF_ENDPOINT to use huggingface.co itself. Files already "
            "downloaded keep working offline."
        ) in str(err.value)
    assert "'me/tiny' is not a file or folder here" in str(
        err.value
    )  # load_model says why it asked the hub
    assert files_under(tmp_path) == []


def test_row6_a_wrong_repo_or_file_name(hub_env, tmp_path, monkeypatch):
    with pytest.raises(errors.RepoNotFoundError) as err:
        downloading.download("me/tinny", local_dir=tmp_path / "dl")
    assert str(err.value).startswith(
        f"No repo 'me/tinny' at {hub_env.url} (or it is private and your token does "
        f"not open it). Check the spelling (owner/name, case-sensitive) on"
    )
    with pytest.raises(
        errors.NoMatchingFilesError, match=r"no file 'Model\.safetensors'.*'model\.safetensors'"
    ):
        downloading.download_file("me/tiny", "Model.safetensors", local_dir=tmp_path / "dl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        errors.RepoNotFoundError,
        match=r"'me/tinny' is not a file or folder here \(looked in .*\), so "
        r"it was taken as a hub id\. No repo 'me/tinny'",
    ):
        loading.load_model("me/tinny")
    assert files_under(tmp_path) == [] and not hub_env.file_gets()


def test_row6_not_enough_disk(hub_env, tmp_path, monkeypatch):
    monkeypatch.setattr(downloading, "free_disk_bytes", lambda path: 5 * 2**20)
    with pytest.raises(errors.NotEnoughDiskError) as err:
        downloading.download("me/tiny", local_dir=tmp_path / "dl")
    assert str(err.value) == (
        "Not downloading me/tiny: the 4 chosen file(s) need 12.6 MB and only 5.2 MB is free at "
        f"{tmp_path / 'dl'}. Free some space, download to another disk (local_dir=..., or HF_HOME "
        "for the cache), or take fewer files with include=... (one GGUF quantization instead of "
        "the whole repo)."
    )
    assert not hub_env.file_gets() and files_under(tmp_path / "dl") == []


# ---- row 7: chat history files ------------------------------------------------------------------

HISTORY = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "法国的首都是哪里？"},
    {"role": "assistant", "content": "巴黎。"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "the file is empty"),
        (b'{"format": "qllm-chat-history", "messages": [{"role": "us', "it is not valid JSON"),
        (b"\xff\xfe\x00garbage", "it is not UTF-8 text"),
    ],
    ids=["empty", "cut-off", "binary"],
)
def test_row7_a_damaged_history_file(tmp_path, content, why):
    path = tmp_path / "chat.json"
    path.write_bytes(content)
    messages, problem = chat.load_history(path)
    kept = list(tmp_path.glob("chat.json.corrupt-*"))
    assert (
        messages == [] and len(kept) == 1 and kept[0].read_bytes() == content
    )  # kept, not destroyed
    assert problem.startswith(f"{path} is not a usable chat history ({why}")
    assert problem.endswith(f"; it is kept as {kept[0]}. Starting a fresh history.")
    assert not path.exists()
    with pytest.raises(chat.ChatHistoryError, match=r"No chat history at .*does not exist"):
        chat.load_history(tmp_path / "missing.json")


def test_row7_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    old = chat.save_history(tmp_path / "chat.json", HISTORY[:3])
    before = old.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chat.os, "fsync", disk_full)  # the new file cannot be finished
    with pytest.raises(chat.ChatHistoryError) as err:
        chat.save_history(old, HISTORY)
    assert str(err.value) == (
        f"Cannot save the chat to {old}: No space left on device (OSError). The old file is "
        "unchanged. Choose a folder you can write to."
    )
    monkeypatch.undo()

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(
        chat.os, "replace", read_only
    )  # the last step fails, as on a read-only file
    with pytest.raises(
        chat.ChatHistoryError,
        match=r"Permission denied \(PermissionError\)\. The old file is "
        r"unchanged\.",
    ):
        chat.save_history(old, HISTORY)
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(
        chat.ChatHistoryError,
        match=r"a-file is a file, not a folder\. Choose a path in a folder "
        r"you can write to\.",
    ):
        chat.save_history(blocker / "chat.json", HISTORY)
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes")
    with pytest.raises(
        chat.ChatHistoryError,
        match=r"Not saving over .*notes\.txt: it exists and is not a chat "
        r"history",
    ):
        chat.save_history(notes, HISTORY)
    assert old.read_bytes() == before and notes.read_text() == "my precious notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file",
        "chat.json",
        "notes.txt",
    ]  # no temp files
    assert chat.load_history(old) == (HISTORY[:3], None)


# ---- row 8: an interrupted course-model build ----------------------------------------------------


def test_row8_an_interrupted_build_is_detected_and_rebuilt(tmp_cache, monkeypatch, capsys):
    """Killed mid-quantization: gptq.partial holds half a checkpoint and no stamp."""
    partial = tmp_cache / "gptq.partial"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "gptq"}})
    )
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)  # half-written weights
    assert course_models.status("gptq") == "interrupted"
    assert (
        next(r for r in course_models.info_rows() if r["format"] == "gptq")["status"]
        == "interrupted"
    )
    course_models.print_info()
    assert re.search(r"^gptq +interrupted ", capsys.readouterr().out, re.M)
    with pytest.raises(
        ModelNotFoundError,
        match=r"gptq does not exist\. Build the course models with "
        r"`python -m course\.models build`",
    ):
        loading.load_model(course_models.model_path("gptq"))  # the half-made one is never used

    built = []

    def fake_child(cmd, **kwargs):  # stands in for the minutes-long quantization child process
        fmt, out = cmd[-2], Path(cmd[-1])
        assert fmt != "gptq" or not partial.exists(), (
            "the interrupted build's leftovers must be cleared first"
        )
        assert out.is_dir() and not any(out.iterdir()), (
            "each build starts in an empty folder of its own"
        )
        (out / (course_models.GGUF_FILENAME if fmt == "gguf" else "config.json")).write_text("{}")
        (out / "build-result.json").write_text(json.dumps({"perplexity": 20.0}))
        built.append(fmt)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(course_models.subprocess, "run", fake_child)
    course_models.ensure(["gptq"], quiet=True)
    assert built == ["gguf", "hf", "gptq"]
    assert course_models.status("gptq") == "ready" and not partial.exists()
    assert sorted(p.name for p in course_models.model_dir("gptq").iterdir()) == [
        "config.json",
        course_models.STAMP,
    ]


def test_row8_an_interrupted_gguf_build_is_rebuilt_for_real(tmp_cache, gguf_header_bytes):
    partial = tmp_cache / "gguf.partial"
    partial.mkdir(parents=True)
    (partial / course_models.GGUF_FILENAME).write_bytes(
        gguf_header_bytes
    )  # killed while writing the file
    assert (
        course_models.status("gguf") == "interrupted"
        and not course_models.model_path("gguf").exists()
    )
    path = course_models.ensure(["gguf"], quiet=True)["gguf"]
    assert course_models.status("gguf") == "ready" and not partial.exists()
    assert (
        path.stat().st_size == 253_113_024
        and loading.check_gguf_header(path)["tensor_count"] == 236
    )


# ---- row 9: safe defaults -----------------------------------------------------------------------


def _custom_code_folder(tmp_path, marker):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my_secret_arch",
                "architectures": ["MyModel"],
                "auto_map": {
                    "AutoConfig": "modeling_my.MyConfig",
                    "AutoModelForCausalLM": "modeling_my.MyModel",
                },
            }
        )
    )
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    (folder / "modeling_my.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    return folder


def test_row9_trust_remote_code_off_unless_asked(tiny_folder, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    marker = tmp_path / "code-ran"
    with pytest.raises(CourseError) as err:
        loading.load_model(_custom_code_folder(tmp_path, marker), check_memory=False)
    assert str(err.value) == (
        "custom defines its architecture ('my_secret_arch') in Python code shipped with the model "
        "(modeling_my.py), and loading it would run that code. The course keeps "
        "trust_remote_code=False. Prefer a model Transformers supports natively; if you have read "
        "that code and trust it, pass trust_remote_code=True."
    )
    assert not marker.exists()

    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loading.load_model(tiny_folder, device="cpu")
    assert not [
        w for w in caught if "trust_remote_code" in str(w.message)
    ]  # the default trusts nothing
    with pytest.warns(
        UserWarning,
        match=r"trust_remote_code=True: Python files shipped with tiny-gemma3 \(named in "
        r"its config\.json auto_map, if any\) will run on this machine with your "
        r"permissions\. Do this only after reading that code",
    ):
        loading.load_model(tiny_folder, device="cpu", trust_remote_code=True)
    assert seen == [False, True]


def test_row9_safetensors_only_unless_allow_pickle(tiny_folder, tmp_path, hub_env):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_folder, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CourseError) as err:
        loading.load_model(folder, device="cpu")
    assert str(err.value) == (
        f"{folder} has only pickle weights (*.bin/*.pt), which can run code when loaded. Prefer a "
        "safetensors copy of the model; to load these anyway, pass allow_pickle=True (only for "
        "sources you trust)."
    )
    with pytest.warns(
        UserWarning,
        match=r"allow_pickle=True: loading pickle weights \(\*\.bin/\*\.pt\) from .*"
        r"Unpickling can run any code",
    ):
        lm = loading.load_model(folder, device="cpu", allow_pickle=True)
    assert lm.format == "hf"
    # from the hub: the pickle is not even downloaded without allow_pickle
    with pytest.raises(
        CourseError, match=r"me/pickle-only has only pickle weights .*allow_pickle=True"
    ):
        downloading.download_model("me/pickle-only")
    assert not hub_env.file_gets()


def test_row9_token_never_printed_by_the_hub_helpers(hub_env, tmp_path, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG)  # everything any library logs
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    shown = hub.settings()
    assert shown["token"] == "set (hidden)"
    downloading.download("me/tiny", include="*.json", local_dir=tmp_path / "dl")
    print(downloading.estimate("me/tiny", local_dir=tmp_path / "dl2"))
    errors = []
    for call in (
        lambda: downloading.download("me/nothing"),
        lambda: downloading.download_file("me/tiny", "nope.bin"),
        lambda: downloading.download_model("me/pickle-only"),
    ):
        with pytest.raises(CourseError) as caught:
            call()
        errors.append(str(caught.value))
    out = capfd.readouterr()
    everything = out.out + out.err + caplog.text + repr(shown) + "".join(errors)
    assert FAKE_TOKEN not in everything and FAKE_TOKEN[-12:] not in everything
    assert {r.authorization for r in hub_env.requests} == {
        f"Bearer {FAKE_TOKEN}"
    }  # it was sent, though
    for path in (tmp_path / "hf-home").rglob(
        "*"
    ):  # nor written into the hub's cache or bookkeeping
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_row9_token_never_in_the_executed_notebook_01(course_cache, tmp_path, monkeypatch):
    """Notebook 01 (local hub, ~15-60 s) run with a token set; every output and the saved file are
    scanned."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    nb = nbformat.read(ROOT / "notebooks" / "01_download.ipynb", as_version=4)
    # the last cell shows the hub settings: the learner's token must still be set after the
    # notebook's token demo
    nb.cells.append(nbformat.v4.new_code_cell("from helpers import hub\nprint(hub.settings())"))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    saved = tmp_path / "01_download.executed.ipynb"
    nbformat.write(nb, saved)
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
    assert "set (hidden)" in outputs  # the token was set to the end
    assert "Traceback" not in outputs
    for text in (outputs, saved.read_text(encoding="utf-8")):
        assert FAKE_TOKEN not in text and FAKE_TOKEN[-12:] not in text


# ---- row 10: the local server never outlives the code that uses it ------------------------------


def gone(pid: int, port: int, wait_s: float = 20.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if not serving.process_exists(pid) and not serving.port_is_open("127.0.0.1", port):
            return True
        time.sleep(0.1)
    return False


def test_row10_server_stops_when_the_with_body_raises(course_cache):
    # the learner's own error comes through, unchanged
    with (
        pytest.raises(ZeroDivisionError),
        serving.llama_server(course_models.model_path("gguf"), n_ctx=256, n_threads=1) as server,
    ):
        pid, port = server.pid, server.port
        assert serving.process_exists(pid) and serving.port_is_open("127.0.0.1", port)
        _ = 1 / 0
    assert gone(pid, port) and not server.running


OWNER = """
import sys, time
from course import models as course_models
from helpers import serving
server = serving.start_llama_server(
    course_models.model_path("gguf"), n_ctx=256, n_threads=1, log_path=sys.argv[2]
)
print(server.pid, server.port, flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the code using the server failed")  # uncaught: the atexit hook must stop it
time.sleep(600)  # killed from outside: the parent-death signal must stop it
"""


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_row10_server_dies_with_its_owner(course_cache, tmp_path, how):
    errors = tmp_path / "owner.stderr"
    with open(errors, "w") as stderr:
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, how, str(tmp_path / "server.log")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "QLLM_THREADS": "1"},
        )
    try:
        pid, port = map(int, owner.stdout.readline().split())
        assert serving.process_exists(pid)
        if how == "kill":
            owner.send_signal(signal.SIGKILL)
        owner.wait(60)
        if how == "raise":
            assert (
                owner.returncode == 1
                and "RuntimeError: the code using the server failed" in errors.read_text()
            )
        assert gone(pid, port), f"server {pid} still running after its owner ended ({how})"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# ---- properties ---------------------------------------------------------------------------------


@QUICK
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: b"GGUF" + b),
        st.binary(max_size=200).map(lambda b: b"GGUF\x03\x00\x00\x00" + b),
    )
)
def test_property_gguf_header_check_never_crashes_on_random_bytes(tmp_path, data):
    path = tmp_path / "random.gguf"
    path.write_bytes(data)
    try:
        loading.check_gguf_header(path)
    except (
        NotAModelError
    ) as err:  # a clear error naming the file, never a struct/Unicode/Memory error
        assert str(path) in str(err)


@QUICK
@given(data=st.data())
def test_property_gguf_header_check_of_a_cut_or_damaged_file(tmp_path, small_gguf, data):
    path = tmp_path / "small.gguf"
    path.write_bytes(small_gguf)
    assert loading.check_gguf_header(path)["tensor_count"] == 2  # the whole file passes
    length = data.draw(st.integers(0, len(small_gguf) - 1), label="cut at")
    path.write_bytes(small_gguf[:length])  # every strict prefix is refused, clearly
    with pytest.raises(NotAModelError, match="empty|truncated|not a GGUF file|header runs past"):
        loading.check_gguf_header(path)
    damaged = bytearray(small_gguf)
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        damaged[data.draw(st.integers(0, len(damaged) - 1), label="offset")] = data.draw(
            st.integers(0, 255)
        )
    path.write_bytes(bytes(damaged))
    try:  # flipped bytes: a clear error, or (a value byte changed) a file that still checks
        loading.check_gguf_header(path)
    except NotAModelError as err:
        assert str(path) in str(err)


def _words(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)  # 2 tokens of template per message


@st.composite
def _histories(draw):
    words = st.integers(0, 40)
    system = [{"role": "system", "content": "s " * draw(words)}] if draw(st.booleans()) else []
    turns = []
    for i in range(draw(st.integers(0, 8))):
        turns += [
            {"role": "user", "content": f"u{i} " + "w " * draw(words)},
            {"role": "assistant", "content": f"a{i} " + "w " * draw(words)},
        ]
    return system + turns + [{"role": "user", "content": "last " + "w " * draw(words)}]


@settings(max_examples=150, deadline=None)
@given(messages=_histories(), budget=st.integers(1, 400))
def test_property_trim_history(messages, budget):
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    original = json.loads(json.dumps(messages))
    if _words(system + turns[-1:]) > budget:
        with pytest.raises(
            chat.ContextWindowError, match="The newest message is too long for the context window"
        ):
            chat.trim_history(messages, _words, budget)
        return
    result = chat.trim_history(messages, _words, budget)
    assert messages == original  # the history itself is never changed
    kept = result.messages
    assert _words(kept) == result.prompt_tokens <= budget  # it fits
    assert kept[: len(system)] == system  # the system prompt always stays
    kept_turns = kept[len(system) :]
    assert (
        kept_turns == turns[len(turns) - len(kept_turns) :]
    )  # a suffix: oldest dropped first, order kept
    assert (
        kept_turns[0]["role"] == "user" and len(kept_turns) % 2 == 1
    )  # whole pairs + the question
    assert result.dropped_pairs == (len(turns) - len(kept_turns)) // 2
    assert result.untrimmed_tokens == _words(messages)
    if result.dropped_pairs:  # and no more than needed
        assert _words(system + turns[len(turns) - len(kept_turns) - 2 :]) > budget
