"""ModelScope as a download source: its real client (`modelscope`) against the course's local
ModelScope server (course/local_modelscope.py), never modelscope.cn. `make setup` installs
`modelscope` (the `modelscope` extra); where it is missing these tests are skipped. Checks what
notebook 01 says of it: the listing gives sizes for a disk check, `allow_patterns` takes one file,
files already in `local_dir` are not fetched again (but are hashed again), and a partial file left
by a killed run is continued."""

from __future__ import annotations

import os
import shutil
from fnmatch import fnmatch

import pytest

pytest.importorskip(
    "modelscope",
    reason="modelscope is not installed (make setup installs it: the modelscope extra)",
)

from course.local_hub import Repo, RepoEntry  # noqa: E402
from course.local_modelscope import LocalModelScope  # noqa: E402

REPO = "me/tiny-GGUF"
WANTED = "tiny-Q4_K_M.gguf"
PATTERN = "*Q4_K_M.gguf"


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {
        WANTED: os.urandom(3 * 2**20),
        "tiny-Q8_0.gguf": os.urandom(2**20),
        "README.md": b"# tiny\n",
        "configuration.json": b'{"framework": "other"}',
    }


@pytest.fixture
def ms(files, tmp_path, monkeypatch):
    """The local server, with `modelscope` pointed at it as a learner points it elsewhere."""
    import urllib3.util.connection

    repo = Repo(REPO, {name: RepoEntry(name, data) for name, data in files.items()})
    real_connect = urllib3.util.connection.create_connection

    def local_only(address, *args, **kwargs):  # the tests must never reach modelscope.cn
        assert address[0] == "127.0.0.1", f"a connection to {address[0]}"
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", local_only)
    with LocalModelScope({REPO: repo}) as server:
        for name in (
            "MODELSCOPE_ENDPOINT",
            "MODELSCOPE_CACHE",
            "MODELSCOPE_HOME",
            "MODELSCOPE_API_TOKEN",
        ):
            monkeypatch.delenv(name, raising=False)  # serve_as_endpoint sets the first three
        server.serve_as_endpoint(tmp_path / "ms-home")
        # the client reads those variables once per process, into a shared config: start from a
        # fresh one
        monkeypatch.setattr("modelscope_hub.config._default_config", None)
        yield server


def download(local_dir, pattern=PATTERN):
    from modelscope import snapshot_download

    return snapshot_download(REPO, allow_patterns=[pattern], local_dir=str(local_dir))


def test_the_listing_gives_every_file_and_its_size_for_a_disk_check(ms, files, tmp_path):
    from modelscope.hub.api import HubApi

    listing = HubApi().get_model_files(REPO)
    assert {f["Path"]: f["Size"] for f in listing} == {
        name: len(data) for name, data in files.items()
    }
    need = sum(f["Size"] for f in listing if fnmatch(f["Path"], PATTERN))
    assert need == len(files[WANTED]) < shutil.disk_usage(tmp_path).free


def test_allow_patterns_takes_one_file_and_nothing_else(ms, files, tmp_path):
    out = download(tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "dl").rglob("*")) == [
        WANTED
    ]  # no metadata folder either
    assert (tmp_path / "dl" / WANTED).read_bytes() == files[WANTED] and out == str(tmp_path / "dl")
    assert [r.path.rsplit("FilePath=", 1)[1] for r in ms.file_gets()] == [WANTED]


def test_local_first_lists_again_but_fetches_nothing(ms, files, tmp_path):
    download(tmp_path / "dl")
    ms.clear_log()
    download(tmp_path / "dl")
    assert ms.file_gets() == []
    assert [r.path.split("?")[0] for r in ms.requests] == [
        f"/api/v1/models/{REPO}/repo/files"
    ]  # not offline


def test_a_file_with_the_right_size_but_wrong_bytes_is_fetched_again(ms, files, tmp_path):
    download(tmp_path / "dl")
    (tmp_path / "dl" / WANTED).write_bytes(
        b"\0" * len(files[WANTED])
    )  # the client hashes what is there
    ms.clear_log()
    download(tmp_path / "dl")
    assert len(ms.file_gets()) == 1 and (tmp_path / "dl" / WANTED).read_bytes() == files[WANTED]


def test_a_partial_file_from_a_killed_run_is_continued_with_a_range_request(ms, files, tmp_path):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / f"{WANTED}.incomplete").write_bytes(
        files[WANTED][: 2**20]
    )  # what a kill -9 leaves
    download(tmp_path / "dl")
    (get,) = ms.file_gets()
    assert (get.status, get.range, get.bytes_sent) == (
        206,
        f"bytes={2**20}-",
        len(files[WANTED]) - 2**20,
    )
    assert (tmp_path / "dl" / WANTED).read_bytes() == files[WANTED]
    assert not (tmp_path / "dl" / f"{WANTED}.incomplete").exists()


def test_a_pattern_that_matches_nothing_downloads_nothing_without_an_error(ms, tmp_path):
    download(tmp_path / "dl", pattern="*Q4_K_S.gguf")  # hence the notebook checks the listing first
    assert ms.file_gets() == [] and not any((tmp_path / "dl").rglob("*"))


def test_an_unknown_repo_is_an_error(ms, tmp_path):
    import requests
    from modelscope import snapshot_download

    with pytest.raises(requests.HTTPError):
        snapshot_download("me/tinny-GGUF", allow_patterns=[PATTERN], local_dir=str(tmp_path / "dl"))
