"""GGUF files: metadata facts, bad files (missing, not GGUF, truncated), and n_ctx overflow."""

import shutil
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import gguf_convert
from helpers import generation, gguf_tools, loading, quality
from helpers.errors import CourseError
from helpers.errors import (
    ContextOverflowError,
    ContextTruncationWarning,
    NotGGUFError,
    TruncatedGGUFError,
)
from helpers.errors import ModelNotFoundError, NotAModelError


@pytest.fixture(scope="module")
def course_gguf(course_cache):
    from course import models as course_models

    return course_models.model_path("gguf")


@pytest.fixture(scope="module")
def header_bytes(course_gguf) -> bytes:
    """The course GGUF up to the start of its tensor data (~6.5 MB): everything the checker
    reads."""
    header = gguf_tools.read_gguf(course_gguf)
    with open(course_gguf, "rb") as handle:
        return handle.read(header.data_offset)


@pytest.fixture(scope="module")
def small_llm(course_gguf):
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(course_gguf), n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False
    )
    yield llm
    llm.close()


def _cut_copy(header_bytes: bytes, total: int, length: int, path):
    """A copy of the course GGUF cut at `length` bytes; the tensor data is sparse zeros (never
    read)."""
    with open(path, "wb") as handle:
        handle.write(header_bytes[:length])
        handle.truncate(min(length, total))
    return path


# ---- what the header says ---------------------------------------------------------------------


def test_metadata_of_the_course_gguf(course_gguf):
    header = gguf_tools.validate_gguf(course_gguf)
    facts = gguf_tools.summary(header)
    assert facts["architecture"] == "gemma3"
    assert facts["layers (block_count)"] == 18 == header.metadata["gemma3.block_count"]
    assert facts["context length"] == 32768
    assert facts["tensor count"] == 236 == len(header.tensors)
    assert facts["chat template"] == "none (base model)"
    assert "tokenizer.chat_template" not in header.metadata
    assert facts["file type"] == "Q4_K_M"
    assert facts["vocabulary size"] == 262144
    types = gguf_tools.bytes_by_type(header)
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} <= set(types)  # Q4_K_M is a mix
    assert header.data_end == header.file_size == course_gguf.stat().st_size


def test_quant_type_rows_group_tensors(course_gguf):
    rows = {r["group"]: r for r in gguf_tools.quant_type_rows(gguf_tools.read_gguf(course_gguf))}
    assert rows["token_embd"]["tensors"] == 1
    assert rows["attn_q"]["tensors"] == 18
    assert "Q4_K" in rows["attn_output"]["types"]
    assert "Q6_K" in rows["ffn_down"]["types"]
    assert rows["attn_norm"]["bits/weight"] == 32.0
    assert (
        sum(r["parameters"] for r in rows.values())
        == gguf_tools.summary(gguf_tools.read_gguf(course_gguf))["parameters"]
    )


def test_the_parser_agrees_with_the_gguf_package(course_gguf):
    from gguf import GGUFReader

    ours = gguf_tools.read_gguf(course_gguf)
    reader = GGUFReader(course_gguf)
    assert ours.data_offset == reader.data_offset
    assert [(t.name, t.type_name, t.n_bytes) for t in ours.tensors] == [
        (t.name, t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors
    ]
    for key in ("general.architecture", "gemma3.context_length", "gemma3.block_count"):
        assert ours.metadata[key] == reader.fields[key].contents()


# ---- bad files --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        gguf_tools.validate_gguf(missing)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        loading.load_model(missing)


@pytest.mark.parametrize(
    "content, hint",
    [
        (b"<!DOCTYPE html><html><body>401 Unauthorized</body></html>", "HTML"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 253113024\n",
            "Git LFS pointer",
        ),
        (b"PK\x03\x04" + bytes(60), "zip archive"),
        (b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}', "safetensors"),
    ],
)
def test_a_file_that_is_not_gguf(tmp_path, content, hint):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(NotGGUFError, match=rf"not a GGUF file: it starts with .*{hint}.*Download"):
        gguf_tools.validate_gguf(bad)
    with pytest.raises(NotAModelError, match="not a GGUF file"):
        loading.load_model(bad)


def test_an_empty_file(tmp_path):
    empty = tmp_path / "model.gguf"
    empty.write_bytes(b"")
    with pytest.raises(NotGGUFError, match=r"empty \(0 bytes\)"):
        gguf_tools.validate_gguf(empty)


def test_a_gguf_from_another_version(tmp_path, header_bytes):
    old = tmp_path / "old.gguf"
    old.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + header_bytes[8:4096])
    with pytest.raises(NotGGUFError, match="version 1 is not one llama.cpp reads"):
        gguf_tools.validate_gguf(old)


def test_a_truncated_gguf(tmp_path, course_gguf, monkeypatch):
    """The real file cut at 60%: the header is whole, the tensor data is not."""
    cut = tmp_path / "cut.gguf"
    size = course_gguf.stat().st_size
    with open(course_gguf, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(size * 6 // 10)
    with pytest.raises(
        TruncatedGGUFError,
        match=rf"truncated: .*236 tensors.*ends at byte {size:,}.*"
        rf"only {size * 6 // 10:,} bytes.*download the file again",
    ):
        gguf_tools.validate_gguf(cut)

    import llama_cpp

    def must_not_run(*args, **kwargs):
        raise AssertionError("llama.cpp was handed a truncated file")

    monkeypatch.setattr(llama_cpp, "Llama", must_not_run)
    with pytest.raises(TruncatedGGUFError):
        loading.load_model(cut)


def test_a_gguf_cut_inside_its_header(tmp_path, header_bytes, course_gguf):
    cut = _cut_copy(header_bytes, course_gguf.stat().st_size, 3_000_000, tmp_path / "cut.gguf")
    with pytest.raises(
        TruncatedGGUFError,
        match=r"header runs past the end of the file \(reading the value of "
        r"'tokenizer.ggml.tokens'",
    ):
        gguf_tools.validate_gguf(cut)


# ---- properties: the checker never crashes with anything but a clear CourseError -----------------

QUICK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@QUICK
@given(st.data())
def test_any_cut_of_the_real_file_is_reported_as_truncated(
    tmp_path, header_bytes, course_gguf, data
):
    size = course_gguf.stat().st_size
    length = data.draw(
        st.one_of(st.integers(0, len(header_bytes)), st.integers(0, size - 1)), label="length"
    )
    path = _cut_copy(header_bytes, size, length, tmp_path / "cut.gguf")
    if length == 0:
        with pytest.raises(NotGGUFError, match="empty"):
            gguf_tools.validate_gguf(path)
    else:
        with pytest.raises(TruncatedGGUFError, match="truncated"):
            gguf_tools.validate_gguf(path)


@QUICK
@given(st.data())
def test_damaged_headers_give_a_clear_error(tmp_path, header_bytes, course_gguf, data):
    """Random bytes overwritten inside the metadata or tensor table: a clear error, or a file that
    still checks."""
    damaged = bytearray(header_bytes)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        where = data.draw(st.integers(4, len(header_bytes) - 1), label="offset")
        damaged[where] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "damaged.gguf"
    path.write_bytes(bytes(damaged))
    with open(path, "r+b") as handle:
        handle.truncate(course_gguf.stat().st_size)
    try:
        gguf_tools.validate_gguf(path)
    except CourseError as err:
        assert str(path) in str(err)


def test_the_real_file_passes(course_gguf):
    header = gguf_tools.validate_gguf(course_gguf)
    assert loading.check_gguf_header(course_gguf)["tensor_count"] == len(header.tensors)


# ---- the context window -------------------------------------------------------------------------

LONG_PROMPT = "Quantization stores each weight in fewer bits. " * 40  # ~360 tokens


def test_a_prompt_longer_than_n_ctx(small_llm):
    # What llama-cpp-python itself does: a bare ValueError.
    with pytest.raises(ValueError, match=r"Requested tokens \(\d+\) exceed context window of 256"):
        small_llm.create_completion(LONG_PROMPT, max_tokens=8)
    # What the course helper says instead, before anything runs.
    with pytest.raises(
        ContextOverflowError,
        match=r"The prompt is \d+ tokens but the model was created with "
        r"n_ctx=256.*n_ctx >= 512",
    ):
        generation.check_context(small_llm, LONG_PROMPT, 32)


def test_prompt_plus_output_beyond_n_ctx_is_cut_short(small_llm):
    prompt = "Quantization stores each weight in fewer bits. " * 24  # ~220 tokens of 256
    with pytest.warns(
        ContextTruncationWarning, match=r"will stop after \d+ tokens with finish_reason='length'"
    ):
        report = generation.check_context(small_llm, prompt, 100)
    assert not report["fits"] and report["suggested_n_ctx"] == 512
    eos = small_llm.token_eos()
    out = small_llm.create_completion(
        prompt, max_tokens=100, temperature=0.0, logit_bias={eos: -100.0}
    )
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == report["prompt_tokens"]
    assert (
        out["usage"]["completion_tokens"] == 256 - report["prompt_tokens"] == report["output_room"]
    )


def test_a_prompt_that_fits_passes_quietly(small_llm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = generation.check_context(small_llm, "The capital of France is", 16)
    assert report["fits"] and report["prompt_tokens"] < 16


def test_n_ctx_that_is_not_a_multiple_of_256(course_gguf):
    """llama.cpp rounds n_ctx up; llama-cpp-python 0.3.36 keeps buffers of the requested size."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(course_gguf), n_ctx=200, n_threads=2, verbose=False)
    try:
        assert llm.n_ctx() == 256 and generation.effective_n_ctx(llm) == 200
        prompt = (
            "Quantization stores each weight in fewer bits. " * 24
        )  # between 200 and 256 tokens
        n = len(llm.tokenize(prompt.encode()))
        assert 200 < n < 256
        with pytest.raises(ValueError, match="could not broadcast"):
            llm.create_completion(prompt, max_tokens=4)
        with pytest.raises(ContextOverflowError, match="ask for a multiple of 256"):
            generation.check_context(llm, prompt, 4)
    finally:
        llm.close()


def test_suggest_n_ctx():
    assert generation.suggest_n_ctx(300, 200) == 512
    assert generation.suggest_n_ctx(256, 0) == 256
    with pytest.raises(ContextOverflowError, match="exceed the model's trained context of 32,768"):
        generation.suggest_n_ctx(30000, 4000, trained_context=32768)


# ---- making GGUF files --------------------------------------------------------------------------


def test_quantize_refuses_a_bad_type_and_a_bad_source(tmp_path, course_gguf):
    with pytest.raises(CourseError, match="Unknown quantization type 'Q3_X'"):
        gguf_convert.quantize_gguf(course_gguf, tmp_path / "x.gguf", "Q3_X")
    html = tmp_path / "page.gguf"
    html.write_text("<html>")
    with pytest.raises(NotGGUFError):
        gguf_convert.quantize_gguf(html, tmp_path / "y.gguf", "Q4_0")
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "y.gguf").exists()


def test_sentencepiece_vocabulary_round_trips(tmp_path, course_gguf):
    """tokenizer.model rebuilt from the GGUF tokenizes like llama.cpp does with the GGUF itself."""
    import sentencepiece

    gguf_convert.write_sentencepiece_files(course_gguf, tmp_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.vocab_size() == 262144
    text = "Quantization keeps 4 bits per weight. 量化模型可以在本地运行。"
    assert [2] + sp.encode(text) == quality.gguf_token_ids(course_gguf, text)
    import json

    added = json.loads((tmp_path / "added_tokens.json").read_text())
    assert added["\n"] == 107 and len(added) == 165  # Gemma's user-defined whitespace tokens


def test_converter_missing_says_how_to_get_it(tmp_cache, monkeypatch):
    monkeypatch.setattr(gguf_convert, "find_sdist", lambda extra_dirs=(): None)
    with pytest.raises(
        gguf_convert.ConverterNotFoundError,
        match=r"not installed.*pip download --no-deps "
        r"--no-binary :all: llama-cpp-python==",
    ):
        gguf_convert.find_converter(download=False)


def test_the_sdist_is_found_in_pips_http_cache(tmp_path, monkeypatch):
    """pip >= 23.3 keeps a downloaded file's raw bytes as http-v2/…/<hash>.body: find it there."""
    import io
    import tarfile

    version = gguf_convert.llama_cpp_version()
    body = tmp_path / "pip" / "http-v2" / "a" / "b" / "c" / "d" / "e" / "0123abcd.body"
    body.parent.mkdir(parents=True)
    with tarfile.open(body, "w:gz") as tar:
        for name, data in [
            (f"llama_cpp_python-{version}/PKG-INFO", b"x"),
            (f"llama_cpp_python-{version}/vendor/llama.cpp/convert_hf_to_gguf.py", b"print(1)"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(gguf_convert, "_pip_cache_dirs", lambda: [tmp_path / "pip"])
    assert gguf_convert.find_sdist() == body
