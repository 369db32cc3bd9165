"""Download helpers against the course's local hub server (no internet): protocol, sizes, errors,
resume."""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import downloading, errors, hub, model_info
from helpers.errors import CourseError
from course.local_hub import LocalHub, Repo, RepoEntry, course_repos
from tests.hub_support import point_at

GGUF_REPO = "qllm-course/gemma-3-270m-GGUF"
GGUF_FILE = "gemma-3-270m-Q4_K_M.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
BIG = os.urandom(
    24 * 2**20
)  # > huggingface_hub's 10 MiB write chunk, so a resume needs a Range request
CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}


def tiny_repos() -> dict[str, Repo]:
    def repo(repo_id, files):
        return Repo(repo_id, {name: RepoEntry(name, data) for name, data in files.items()})

    return {
        "me/tiny": repo(
            "me/tiny",
            {
                "config.json": json.dumps(CONFIG).encode(),
                "model.safetensors": BIG,
                "tokenizer.json": b'{"version": "1.0"}',
                "README.md": b"# tiny\n",
                "notes/train.log": b"log\n",
            },
        ),
        "me/pickle-only": repo(
            "me/pickle-only",
            {
                "config.json": json.dumps(CONFIG).encode(),
                "pytorch_model.bin": b"\x80\x04pickle",
                "README.md": b"#\n",
            },
        ),
        "me/two-ggufs": repo(
            "me/two-ggufs",
            {
                "m-Q4_K_M.gguf": b"GGUF" + bytes(60),
                "m-Q8_0.gguf": b"GGUF" + bytes(90),
                "README.md": b"#\n",
            },
        ),
    }


@pytest.fixture(scope="module")
def tiny_hub():
    with LocalHub(tiny_repos()) as server:
        yield server


@pytest.fixture(scope="module")
def course_hub(course_cache):
    with LocalHub(
        course_repos(gguf_types=False)
    ) as server:  # one .gguf file: a hub id alone names the model
        yield server


@pytest.fixture
def tiny(tiny_hub, tmp_path, monkeypatch):
    return point_at(tiny_hub, tmp_path, monkeypatch)


@pytest.fixture
def course(course_hub, tmp_path, monkeypatch):
    return point_at(course_hub, tmp_path, monkeypatch)


def files_under(path: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        if path.exists()
        else []
    )


# ---- the server speaks the hub protocol -----------------------------------------------------


def test_server_answers_what_the_hub_client_needs(tiny):
    import httpx2
    from huggingface_hub import HfApi

    api = HfApi(endpoint=tiny.url)
    info = api.model_info("me/tiny", files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == len(BIG)
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs.sha256 == hashlib.sha256(BIG).hexdigest()
    assert len(info.sha) == 40
    assert {f.path for f in api.list_repo_tree("me/tiny", recursive=True)} == set(sizes)
    assert [f.path for f in api.get_paths_info("me/tiny", ["config.json", "missing.txt"])] == [
        "config.json"
    ]

    url = f"{tiny.url}/me/tiny/resolve/main/model.safetensors"
    head = httpx2.head(url)
    assert head.headers["X-Repo-Commit"] == info.sha
    assert head.headers["ETag"] == f'"{hashlib.sha256(BIG).hexdigest()}"'  # sha256 for large files
    assert int(head.headers["Content-Length"]) == len(BIG)
    part = httpx2.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.headers["Content-Range"] == f"bytes 100-199/{len(BIG)}"
    assert part.content == BIG[100:200]

    for path, status, code in [
        ("/api/models/me/nothing", 401, "RepoNotFound"),
        ("/me/tiny/resolve/main/nothing.bin", 404, "EntryNotFound"),
        ("/me/tiny/resolve/v9/config.json", 404, "RevisionNotFound"),
        ("/api/models/me/tiny/revision/v9", 404, "RevisionNotFound"),
    ]:
        answer = httpx2.get(tiny.url + path)
        assert (answer.status_code, answer.headers["X-Error-Code"]) == (status, code), path
    assert (
        httpx2.get(tiny.url + "/api/agent-harnesses").status_code == 404
    )  # the CLI asks; 404 is fine
    with (
        httpx2.Client() as client
    ):  # an error answer must not leave a request body in a kept-alive connection
        assert (
            client.post(
                tiny.url + "/api/models/me/nothing/paths-info/main", data={"paths": ["a"]}
            ).status_code
            == 401
        )
        assert client.get(tiny.url + "/api/models/me/tiny").json()["id"] == "me/tiny"


def test_use_endpoint_restores_the_settings(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    with hub.use_endpoint("http://127.0.0.1:1"):
        assert hub.endpoint() == "http://127.0.0.1:1" and os.environ["HF_HUB_DISABLE_XET"] == "1"
    assert hub.endpoint() == "https://mirror.example" and "HF_HUB_DISABLE_XET" not in os.environ


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(start=st.integers(0, len(BIG) - 1), length=st.integers(1, 3000), open_ended=st.booleans())
def test_any_range_returns_exactly_that_slice(tiny_hub, start, length, open_ended):
    import httpx2

    end = min(start + length, len(BIG)) - 1
    wanted = f"bytes={start}-" if open_ended else f"bytes={start}-{end}"
    if open_ended:
        end = len(BIG) - 1
    with httpx2.stream(
        "GET", f"{tiny_hub.url}/me/tiny/resolve/main/model.safetensors", headers={"Range": wanted}
    ) as answer:
        body = answer.read()
    assert answer.status_code == 206
    assert answer.headers["Content-Range"] == f"bytes {start}-{end}/{len(BIG)}"
    assert body == BIG[start : end + 1]


def test_server_always_stops():
    with pytest.raises(RuntimeError), LocalHub(tiny_repos()) as server:
        port = server.port
        raise RuntimeError("a failing cell")
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("kind", ["hub", "modelscope"])
def test_stop_closes_a_kept_alive_connection(kind):
    """Both local servers keep connections alive (HTTP/1.1): stop() must end those too, or a
    client's open connection would go on being served after the server stopped."""
    import http.client

    from course.local_modelscope import LocalModelScope

    server_class, path = {
        "hub": (LocalHub, "/api/models/me/tiny"),
        "modelscope": (LocalModelScope, "/api/v1/models/me/tiny"),
    }[kind]
    server = server_class(tiny_repos()).start()
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        client.request("GET", path)
        answer = client.getresponse()
        assert answer.status == 200 and answer.getheader("Connection") != "close"
        answer.read()  # the connection stays open for the next request
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5  # promptly, without waiting for the client
        # the server closed its side: the client reads the end of the stream (a socket timeout
        # here, after 5 s, would mean the connection is still being served)
        assert client.sock.recv(1) == b""
    finally:
        client.close()
        server.stop()


# ---- listing, picking, estimating -------------------------------------------------------------


def test_list_and_pick_like_include(tiny):
    names = [f.path for f in hub.list_files("me/tiny")]
    assert names == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "README.md", "notes/train.log"]
    )
    files = hub.list_files("me/tiny")
    assert [f.path for f in hub.pick(files, include="*.json")] == ["config.json", "tokenizer.json"]
    assert [f.path for f in hub.pick(files, include="notes/")] == [
        "notes/train.log"
    ]  # a folder, as in the CLI
    assert "model.safetensors" not in [f.path for f in hub.pick(files, exclude=["*.safetensors"])]
    assert (
        downloading.cli_command("me/tiny", include=["*.json", "*.safetensors"], local_dir="x")
        == 'hf download me/tiny --include "*.json" --include "*.safetensors" --local-dir x'
    )


def test_estimate_equals_bytes_actually_downloaded_and_the_gguf_is_the_real_one(course, tmp_path):
    plan = downloading.estimate(GGUF_REPO, include="*Q4_K_M.gguf", local_dir=tmp_path / "gguf")
    assert plan.total_bytes == 253_113_024 and plan.fits and plan.present_bytes == 0
    got = downloading.download(
        GGUF_REPO, include="*Q4_K_M.gguf", local_dir=tmp_path / "gguf", quiet=True
    )
    on_disk = sum((tmp_path / "gguf" / f.path).stat().st_size for f in got.files)
    sent = sum(r.bytes_sent for r in course.file_gets())
    assert plan.total_bytes == got.total_bytes == got.fetched_bytes == on_disk == sent
    assert downloading.sha256_file(got.path / GGUF_FILE) == GGUF_SHA256 and got.verified
    # the whole repo (cache mode): estimate == sum of what lands in the snapshot folder
    whole = downloading.estimate(GGUF_REPO)
    snap = downloading.download(GGUF_REPO, quiet=True)
    assert whole.total_bytes == sum((snap.path / f.path).stat().st_size for f in snap.files)
    assert snap.path.is_relative_to(hub.hub_cache_dir())


def test_the_gguf_repo_serves_the_course_gguf_types_when_they_were_made(
    course_cache, tmp_path, monkeypatch
):
    from course import models as course_models

    monkeypatch.setattr(course_models, "types_dir", lambda: tmp_path)
    assert [f for f in course_repos()[GGUF_REPO].files if f.endswith(".gguf")] == [
        GGUF_FILE
    ]  # none made yet
    (tmp_path / "gemma-3-270m-Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))
    (tmp_path / "gemma-3-270m-Q8_0.gguf.log").write_text("a log is not served")
    with LocalHub(course_repos()) as server:
        point_at(server, tmp_path, monkeypatch)
        served = {f.path: f.size for f in hub.list_files(GGUF_REPO, include="*.gguf*")}
    assert served == {
        GGUF_FILE: 253_113_024,
        "gemma-3-270m-Q8_0.gguf": 64,
    }  # served in place; no log
    assert [f for f in course_repos(gguf_types=False)[GGUF_REPO].files if f.endswith(".gguf")] == [
        GGUF_FILE
    ]


def test_how_big_is_a_model_from_config_and_from_the_gguf_header(course, course_cache):
    from course import models as course_models

    exact = safetensors_params(course_models.model_dir("hf") / "model.safetensors")
    size = model_info.model_size("qllm-course/gemma-3-270m")
    assert size.params == exact  # config.json arithmetic matches the real tensors exactly
    assert size.files_bytes == (course_models.model_dir("hf") / "model.safetensors").stat().st_size
    assert size.theory_bytes["bf16 / fp16"] == 2 * exact
    course.clear_log()
    gguf = model_info.model_size(GGUF_REPO)
    assert gguf.params == exact and gguf.source == "GGUF header"
    header_bytes = sum(r.bytes_sent for r in course.file_gets())
    assert header_bytes < 16 * 2**20  # read with a Range request, not the 253 MB file
    assert model_info.model_size("qllm-course/gemma-3-270m-GPTQ-4bit").params == exact
    # a header longer than the first read: more is fetched, never the same bytes twice
    course.clear_log()
    assert model_info.gguf_header_remote(GGUF_REPO, GGUF_FILE, first_bytes=2**20)["params"] == exact
    gets = course.file_gets()
    assert len(gets) > 1 and gets[0].range == f"bytes=0-{2**20 - 1}"
    for before, after in zip(gets, gets[1:], strict=False):
        assert after.range == (
            f"bytes={int(before.range.split('-')[1]) + 1}-{2 * int(before.range.split('-')[1]) + 1}"
        )


def safetensors_params(path: Path) -> int:
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def test_param_count_matches_published_7b_models():
    mistral_7b_v03 = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
    }
    qwen25_7b = {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    }
    assert model_info.param_count(mistral_7b_v03) == 7_248_023_552
    assert model_info.param_count(qwen25_7b) == 7_615_616_512


@settings(max_examples=15, deadline=None)
@given(
    kv=st.dictionaries(
        st.text("abcdefgh.", min_size=1, max_size=12), st.integers(0, 2**31 - 1), max_size=6
    ),
    shapes=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=3), min_size=1, max_size=5),
)
def test_gguf_header_parser_agrees_with_the_gguf_writer(tmp_path_factory, kv, shapes):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        writer.add_uint32("x." + key, value)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(50)])
    for i, shape in enumerate(shapes):
        writer.add_tensor(f"t{i}", np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parsed = model_info.gguf_header(path)
    assert parsed["params"] == sum(int(np.prod(s)) for s in shapes)
    assert parsed["tensor_count"] == len(shapes)
    assert all(parsed["metadata"]["x." + k] == v for k, v in kv.items())
    assert parsed["metadata"]["tokenizer.ggml.tokens"].length == 50  # long arrays are summarised
    from helpers.errors import TruncatedGGUFError
    from helpers.gguf_tools import parse_gguf_bytes

    data = path.read_bytes()[: parsed["header_bytes"] - 1]
    with pytest.raises(TruncatedGGUFError):  # a cut header is never read as a complete one
        parse_gguf_bytes(data)


# ---- local-first ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local_dir", "cache", "single file"])
def test_local_first_does_not_fetch_again(tiny, tmp_path, capsys, mode):
    local_dir = tmp_path / "dl" if mode == "local_dir" else None
    if mode == "single file":
        first = downloading.download_file(
            "me/tiny", "model.safetensors", local_dir=tmp_path / "one"
        )
    else:
        first = downloading.download(
            "me/tiny", include=["*.json", "*.safetensors"], local_dir=local_dir
        )
    assert not first.already_local and first.fetched_bytes >= len(BIG)
    tiny.clear_log()
    if mode == "single file":
        again = downloading.download_file(
            "me/tiny", "model.safetensors", local_dir=tmp_path / "one"
        )
    else:
        again = downloading.download(
            "me/tiny", include=["*.json", "*.safetensors"], local_dir=local_dir
        )
    assert again.already_local and again.fetched_bytes == 0
    assert tiny.requests == []  # not a single request: no GET, no HEAD, no listing
    assert "already in" in capsys.readouterr().out
    assert again.path == first.path
    if mode != "single file":
        downloading.download(
            "me/tiny",
            include=["*.json", "*.safetensors"],
            local_dir=local_dir,
            force=True,
            quiet=True,
        )
        assert tiny.file_gets(), "force=True fetches again"


# ---- bad input: each a clear error, nothing half-written ------------------------------------


def test_wrong_repo_id(tiny, tmp_path):
    with pytest.raises(errors.RepoNotFoundError, match=r"No repo 'me/tinny'.*Check the spelling"):
        downloading.download("me/tinny", local_dir=tmp_path / "dl")
    with pytest.raises(errors.RepoNotFoundError, match="not a valid repo id.*owner/name"):
        hub.list_files("not a repo id")
    assert not (tmp_path / "dl").exists()


def test_wrong_file_name_suggests_the_right_one(tiny, tmp_path):
    with pytest.raises(
        errors.NoMatchingFilesError, match=r"no file 'Model.safetensors'.*'model.safetensors'"
    ):
        downloading.download_file("me/tiny", "Model.safetensors", local_dir=tmp_path / "dl")
    assert files_under(tmp_path / "dl") == []
    # the same mistake reaching huggingface_hub directly (its EntryNotFound) reads the same way
    from huggingface_hub import hf_hub_download

    with (
        pytest.raises(errors.NoMatchingFilesError, match="exact name"),
        hub.hub_errors("me/tiny", "main", "Model.safetensors"),
    ):
        hf_hub_download("me/tiny", "Model.safetensors", endpoint=tiny.url, cache_dir=tmp_path / "c")


def test_pattern_matching_nothing(tiny, tmp_path):
    with pytest.raises(
        errors.NoMatchingFilesError, match=r"Nothing in me/tiny matches include=\['\*.gguf'\]"
    ):
        downloading.download("me/tiny", include="*.gguf", local_dir=tmp_path / "dl")
    assert not tiny.file_gets() and files_under(tmp_path / "dl") == []


def test_unreachable_endpoint(tiny, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for call in (
        lambda: hub.list_files("me/tiny"),
        lambda: downloading.download("me/tiny", local_dir=tmp_path / "dl"),
        lambda: downloading.download_model("me/tiny"),
    ):
        with pytest.raises(
            errors.HubUnreachableError, match=f"Cannot reach http://127.0.0.1:{port}.*HF_ENDPOINT"
        ):
            call()
    assert not (tmp_path / "dl").exists()


def test_offline_mode_is_named_as_the_reason(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.HubUnreachableError, match="HF_HUB_OFFLINE=1"):
        hub.list_files("me/tiny")


def test_not_enough_disk_refuses_before_writing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(
        downloading, "free_disk_bytes", lambda path: 5 * 2**20
    )  # the disk check sees 5 MiB free
    plan = downloading.estimate("me/tiny", local_dir=tmp_path / "dl")
    assert not plan.fits and plan.need_bytes > plan.free_bytes
    with pytest.raises(
        errors.NotEnoughDiskError, match=r"need 25.2 MB and only 5.2 MB is free.*include="
    ):
        downloading.download("me/tiny", local_dir=tmp_path / "dl")
    with pytest.raises(errors.NotEnoughDiskError):
        downloading.download_model("me/tiny")
    assert not tiny.file_gets() and files_under(tmp_path / "dl") == []
    assert (
        downloading.download(
            "me/tiny", include="*.json", local_dir=tmp_path / "dl", quiet=True
        ).total_bytes
        < 2**20
    )


def test_cut_transfer_resumes_with_range_and_sha256_verified(tiny, tmp_path):
    tiny.cut_next_transfer(15 * 2**20, path="model.safetensors")
    got = downloading.download_file(
        "me/tiny", "model.safetensors", local_dir=tmp_path / "dl", quiet=True
    )
    gets = [(r.status, r.range, r.event) for r in tiny.file_gets()]
    assert gets[0] == (200, None, "cut")
    status, wanted, _ = gets[1]
    assert (
        status == 206 and wanted.startswith("bytes=") and int(wanted[6:].rstrip("-")) > 0
    )  # resumed, not restarted
    assert got.verified and downloading.sha256_file(got.path) == hashlib.sha256(BIG).hexdigest()
    assert hub.find_incomplete(tmp_path / "dl") == []


def test_transfer_that_never_recovers_leaves_nothing(tiny, tmp_path):
    tiny.cut_next_transfer(0, path="model.safetensors", times=50)  # every attempt dies at once
    try:
        with pytest.raises(errors.DownloadFailedError, match="run the download again"):
            downloading.download_file(
                "me/tiny", "model.safetensors", local_dir=tmp_path / "dl", quiet=True
            )
    finally:
        tiny._switches.clear()
    assert not (tmp_path / "dl" / "model.safetensors").exists()
    assert hub.find_incomplete(tmp_path / "dl") == []


def test_corrupted_file_is_deleted_not_left_looking_complete(tmp_path, monkeypatch):
    bad = RepoEntry(
        "model.safetensors", BIG[: 2**20], _sha256="0" * 64
    )  # the hub says one sha, bytes say another
    repo = Repo(
        "me/corrupt", {"model.safetensors": bad, "config.json": RepoEntry("config.json", b"{}")}
    )
    with LocalHub({"me/corrupt": repo}) as server:
        point_at(server, tmp_path, monkeypatch)
        for local_dir in (tmp_path / "dl", None):
            with pytest.raises(errors.DownloadFailedError, match="wrong sha256.*deleted"):
                downloading.download("me/corrupt", local_dir=local_dir, quiet=True)
        assert not (tmp_path / "dl" / "model.safetensors").exists()
        blobs = hub.storage_folder("me/corrupt") / "blobs"
        assert [p for p in blobs.iterdir() if p.stat().st_size == 2**20] == []


def test_token_is_sent_but_never_printed(tiny, tmp_path, monkeypatch, capfd):
    secret = "hf_" + "S3cr3tT0k3n" * 3
    monkeypatch.setenv("HF_TOKEN", secret)
    shown = hub.settings()
    assert shown["token"] == "set (hidden)"
    downloading.download("me/tiny", include="*.json", local_dir=tmp_path / "dl")
    errors = []
    for call in (
        lambda: downloading.download("me/nothing"),
        lambda: downloading.download_file("me/tiny", "nope.bin"),
    ):
        with pytest.raises(CourseError) as caught:
            call()
        errors.append(str(caught.value))
    out = capfd.readouterr()
    everything = out.out + out.err + repr(shown) + "".join(errors)
    assert secret not in everything
    assert {r.authorization for r in tiny.requests} == {f"Bearer {secret}"}  # it was used, though


# ---- what load_model gets for a hub id --------------------------------------------------------


def test_download_model_takes_config_weights_and_tokenizer_only(tiny):
    path = downloading.download_model("me/tiny", quiet=True)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.json"]
    with pytest.raises(CourseError, match="pickle.*allow_pickle=True"):
        downloading.download_model("me/pickle-only")
    assert sorted(
        os.listdir(downloading.download_model("me/pickle-only", allow_pickle=True, quiet=True))
    ) == ["config.json", "pytorch_model.bin"]


def test_download_model_needs_one_gguf_out_of_several(tiny):
    with pytest.raises(errors.AmbiguousFilesError, match="2 GGUF files.*gguf_file="):
        downloading.download_model("me/two-ggufs")
    path = downloading.download_model("me/two-ggufs", gguf_file="*Q8_0.gguf", quiet=True)
    assert path.name == "m-Q8_0.gguf" and path.stat().st_size == 94
    assert not (path.parent / "m-Q4_K_M.gguf").exists()


def test_load_model_accepts_a_hub_id(course):
    from helpers.generation import generate
    from helpers.loading import _resolve_source, load_model

    lm = load_model(GGUF_REPO, n_ctx=256, n_threads=2)  # a hub id: downloaded, then loaded
    assert lm.format == "gguf" and lm.path.name == GGUF_FILE
    assert downloading.sha256_file(lm.path) == GGUF_SHA256
    assert generate(lm, "The capital of France is", max_new_tokens=3).strip()
    course.clear_log()
    assert _resolve_source(GGUF_REPO) == lm.path
    assert course.requests == []  # the second time it is local-first


# ---- the real CLI, and what a killed process leaves behind ------------------------------------


def hf_cli(*args, env, **kw):
    return subprocess.run(
        [sys.executable, "-m", "huggingface_hub.cli.hf", "download", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_cli_downloads_from_the_local_hub(tiny, tmp_path):
    env = dict(os.environ, HF_HUB_DISABLE_UPDATE_CHECK="1")
    done = hf_cli("me/tiny", "--include", "*.json", "--local-dir", str(tmp_path / "cli"), env=env)
    assert done.returncode == 0, done.stderr
    # (plus huggingface_hub's own bookkeeping under .cache/huggingface/)
    assert [f for f in files_under(tmp_path / "cli") if not f.startswith(".cache")] == [
        "config.json",
        "tokenizer.json",
    ]
    assert sorted(r.path.rsplit("/", 1)[1] for r in tiny.file_gets()) == [
        "config.json",
        "tokenizer.json",
    ]
    assert downloading.cli_command(
        "me/tiny", include="*.json", local_dir=tmp_path / "cli"
    ).startswith("hf download me/tiny")


def test_killed_download_starts_over_and_leaves_an_orphan(course, tmp_path):
    """huggingface_hub 2.x: within a run it resumes (test above); after kill -9 it starts from
    zero."""
    dest = tmp_path / "dl"
    argv = [
        sys.executable,
        "-m",
        "huggingface_hub.cli.hf",
        "download",
        GGUF_REPO,
        GGUF_FILE,
        "--local-dir",
        str(dest),
    ]
    left = course.kill_download_midway(
        argv, path=GGUF_FILE, local_dir=dest, at_bytes=40 * 2**20, timeout=60
    )
    assert any(
        r.event == "stalled" for r in course.file_gets()
    )  # the client really was cut mid-file
    orphans = hub.find_incomplete(dest)
    assert orphans == left and len(orphans) == 1 and orphans[0].stat().st_size == 40 * 2**20
    assert not (dest / GGUF_FILE).exists()  # nothing looks complete
    course.clear_log()
    got = downloading.download_file(GGUF_REPO, GGUF_FILE, local_dir=dest, quiet=True)
    rerun = course.file_gets()
    assert [r.range for r in rerun] == [None] and rerun[0].bytes_sent == 253_113_024  # from byte 0
    assert downloading.sha256_file(got.path) == GGUF_SHA256
    assert got.orphans == orphans  # still there, and reported
    assert hub.clean_incomplete(dest, older_than_s=0) == (1, 40 * 2**20)
    assert hub.find_incomplete(dest) == []
