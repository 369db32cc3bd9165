"""A local, Hugging Face Hub-compatible file server (standard library only) for offline runs and
tests.

    with LocalHub() as hub:                  # serves the course models, 127.0.0.1, a free port
        os.environ["HF_ENDPOINT"] = hub.url  # exactly how you point the client at a mirror
        ...                                  # hf_hub_download / snapshot_download / `hf download`

    python -m course.local_hub               # the same from a terminal, until Ctrl-C

It answers what `huggingface_hub` (2.x) and the `hf` CLI ask a hub for: repo info with file sizes
and sha256 (`/api/models/{repo}[/revision/{rev}]?blobs=true`), the file tree, paths-info, and
`HEAD`/`GET /{repo}/resolve/{rev}/{file}` with `X-Repo-Commit`, `ETag`, `Content-Length` and `Range`
(206 + `Content-Range`). Errors carry the hub's `X-Error-Code` (RepoNotFound 401, EntryNotFound 404,
RevisionNotFound 404), so the client raises its real error classes. Files are served by reference
from where they are (the course cache), never copied. Two switches break transfers on purpose:
`cut_next_transfer` drops the connection after N bytes (the client resumes with a Range request) and
`stall_next_transfer` hangs after N bytes (so a test can kill a downloading process mid-file).
Every request is recorded in `hub.requests` (method, path, status, Range, bytes sent).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

NAMESPACE = "qllm-course"
# Like the original tutorial's repos (…-GPTQ-4bit, …-AWQ, …-GGUF), but holding the course model.
COURSE_REPOS = {
    f"{NAMESPACE}/gemma-3-270m": "hf",
    f"{NAMESPACE}/gemma-3-270m-GPTQ-4bit": "gptq",
    f"{NAMESPACE}/gemma-3-270m-AWQ": "awq",
    f"{NAMESPACE}/gemma-3-270m-GGUF": "gguf",
}
LFS_MIN_BYTES = 10 * 2**20  # the hub stores big files (and weights) in LFS: ETag = sha256
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".model")
CHUNK = 2**20
PRIVATE_FILES = {"course-build.json"}  # the course's build stamp is not part of a published repo


@dataclass
class RepoEntry:
    """One file of a served repo: its bytes live in `source` (a file on disk, or bytes)."""

    path: str
    source: Path | bytes
    size: int = 0
    _sha256: str | None = None

    def __post_init__(self):
        self.size = (
            len(self.source) if isinstance(self.source, bytes) else Path(self.source).stat().st_size
        )

    @property
    def lfs(self) -> bool:
        return self.size >= LFS_MIN_BYTES or self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:  # computed once, when a client first asks
            digest = hashlib.sha256()
            if isinstance(self.source, bytes):
                digest.update(self.source)
            else:
                with open(self.source, "rb") as handle:
                    while block := handle.read(8 * CHUNK):
                        digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def _pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()

    @property
    def blob_id(self) -> str:
        """The git object id: of the LFS pointer for LFS files, of the content otherwise (as on the
        hub)."""
        data = self._pointer() if self.lfs else self.read(0, self.size)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def read(self, start: int, length: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start : start + length]
        with open(self.source, "rb") as handle:
            handle.seek(start)
            return handle.read(length)

    def tree_row(self) -> dict:
        row = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            row["lfs"] = self._lfs("oid")
        return row

    def sibling(self, blobs: bool) -> dict:
        row = {"rfilename": self.path}
        if blobs:
            row.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                row["lfs"] = self._lfs("sha256")
        return row

    def _lfs(self, digest_key: str) -> dict:
        """An LFS file's record: its sha256 (under the name each API gives it), size, pointer
        size."""
        return {digest_key: self.sha256, "size": self.size, "pointerSize": len(self._pointer())}


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoEntry]
    commit: str = ""

    def __post_init__(self):
        if not self.commit:  # stable while the files do not change
            digest = hashlib.sha1(self.repo_id.encode())
            for name in sorted(self.files):
                entry = self.files[name]
                stamp = (
                    entry.source
                    if isinstance(entry.source, bytes)
                    else str(Path(entry.source).stat().st_mtime_ns).encode()
                )
                digest.update(f"{name}\0{entry.size}\0".encode() + stamp)
            self.commit = digest.hexdigest()


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    range: str | None = None
    bytes_sent: int = 0
    authorization: str | None = None  # kept in memory for tests (was a token sent?); never logged
    event: str = ""  # "cut" or "stalled" when a switch fired

    @property
    def is_file_get(self) -> bool:
        return self.method == "GET" and "/resolve/" in self.path


@dataclass
class _Switch:
    kind: str  # "cut" | "stall"
    after_bytes: int
    path: str | None
    times: int
    released: threading.Event = field(default_factory=threading.Event)


def repo_from_folder(
    repo_id: str,
    folder: Path,
    extra: dict[str, bytes | Path] | None = None,
    only: list[str] | None = None,
) -> Repo:
    """A repo whose files are those of `folder` (served in place), plus `extra` files (bytes, or
    paths)."""
    files = {
        p.name: RepoEntry(p.name, p)
        for p in sorted(Path(folder).iterdir())
        if p.is_file()
        and p.name not in PRIVATE_FILES
        and not p.name.startswith(".")
        and (only is None or p.name in only)
    }
    for name, data in (extra or {}).items():
        files[name] = RepoEntry(name, data)
    return Repo(repo_id, files)


_GITATTRIBUTES = b"".join(
    f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES
)
_GITATTRIBUTES += b"tokenizer.json filter=lfs diff=lfs merge=lfs -text\n"


def _readme(repo_id: str, fmt: str) -> bytes:
    what = {
        "hf": "bf16 safetensors (full precision)",
        "gptq": "4-bit GPTQ, group size 128 (GPTQModel)",
        "awq": "4-bit AWQ GEMM, group size 128 (GPTQModel)",
        "gguf": "GGUF Q4_K_M for llama.cpp (and the course's other GGUF types, when made)",
    }[fmt]
    return (
        f"# {repo_id}\n\nGemma 3 270M (base model), {what}.\nServed by the course's local hub "
        "(course/local_hub.py) from the course model cache. Licence: Gemma Terms of Use.\n"
    ).encode()


def course_repos(gguf_types: bool = True) -> dict[str, Repo]:
    """The course models (those built) as hub repos, named like the original tutorial's. With
    `gguf_types`, the GGUF repo also serves the course's other GGUF types when they were made
    (`python -m course.gguf_convert types`, run by `make models`, or notebook 04b): a repo with
    several files to choose from, as on the hub."""
    from . import models as course_models

    repos = {}
    for repo_id, fmt in COURSE_REPOS.items():
        if course_models.read_stamp(fmt) is None:
            continue  # not built: `python -m course.models build`
        extra = {".gitattributes": _GITATTRIBUTES, "README.md": _readme(repo_id, fmt)}
        if fmt == "gguf" and gguf_types:
            shipped = course_models.model_dir(
                fmt
            )  # its file wins over a type of the same name (04b's Q4_K_M)
            extra.update(
                {
                    path.name: path
                    for path in sorted(course_models.types_dir().glob("*.gguf"))
                    if not (shipped / path.name).exists()
                }
            )  # served in place
        repos[repo_id] = repo_from_folder(repo_id, course_models.model_dir(fmt), extra)
    return repos


class LocalServer:
    """What the course's local servers share: start and stop on 127.0.0.1 (a free port), kept-alive
    connections closed by stop too; the address; a context manager that always stops; the request
    log. A subclass names its request handler (a `RequestHandler`) and adds only what differs."""

    thread_name = "local-server"

    def __init__(
        self, repos: dict[str, Repo] | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.repos = course_repos() if repos is None else repos
        self.host, self.port = host, port
        self.requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[RequestHandler]:
        """The class that answers this server's requests."""
        raise NotImplementedError

    def start(self) -> LocalServer:
        if self._server is not None:
            return self
        handler = type("Handler", (self._handler(),), {"owner": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self.thread_name, daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)  # a notebook kernel that dies still frees the port
        return self

    def stop(self) -> None:
        """Stop serving (safe to call twice), kept-alive connections included."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:  # keep-alive connections would otherwise go on being served
                for conn in list(self._connections):
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.url}, {state}, repos={sorted(self.repos)})"

    def file_gets(self) -> list:
        """The GETs of file contents (not HEADs, not API calls)."""
        return [r for r in self.requests if r.is_file_get]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()


def byte_range(header: str | None, size: int) -> tuple[int, int, int] | None:
    """(status, first byte, last byte) that a `Range` header asks of a file of `size` bytes: 200
    and the whole file without one (or with one this server does not read: several ranges, another
    unit), 206 and the range, None for a range that lies outside the file (a 416)."""
    # our own: http.server has no Range support, and the servers are standard library only
    if not (header and header.startswith("bytes=") and "," not in header):
        return 200, 0, size - 1
    first, _, last = header[6:].partition("-")
    try:
        start = int(first) if first else max(size - int(last), 0)
        end = min(int(last), size - 1) if first and last else size - 1
    except ValueError:
        start, end = 0, size - 1
    if start >= size or start > end:
        return None
    return 206, start, end


class RequestHandler(BaseHTTPRequestHandler):
    """What the local servers' request handlers share: keep-alive (its connections known to the
    server, so that stop can close them), the request log, a JSON reply, a file with Range (206,
    416) and its body loop. A subclass routes the request (`_route`) and may wrap its JSON
    (`_envelope`)."""

    owner: LocalServer  # the server this handler answers for (set by LocalServer.start)
    protocol_version = "HTTP/1.1"  # keep-alive, as the real servers
    record_type = RequestRecord

    def log_message(self, *args) -> None:  # quiet: the request list is the log
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        # read any request body now: an error answer must not leave it in a kept-alive connection
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # the client may go away (killed, or a test cut it): nothing to answer then
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(parts, parse_qs(url.query))

    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        raise NotImplementedError

    def _record(self, status: int, sent: int = 0, event: str = "") -> None:
        record = self.record_type(
            self.command,
            self.path,
            status,
            self.headers.get("Range"),
            sent,
            self.headers.get("Authorization"),
            event,
        )
        with self.owner._lock:
            self.owner.requests.append(record)

    def _envelope(self, data, status: int):
        """What a JSON reply holds: `data` itself here; a server with an envelope wraps it."""
        return data

    def _send_json(self, data, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(self._envelope(data, status)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, len(body))

    def _send_file(self, entry: RepoEntry, headers: dict | None = None) -> None:
        """Answer a GET or HEAD of `entry`: the whole file (200), the Range asked for (206, with
        Content-Range), or 416 for a range outside it; `headers` go in the 200/206 answer."""
        wanted = byte_range(self.headers.get("Range"), entry.size)
        if wanted is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{entry.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._record(416)
            return
        status, start, end = wanted
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if self.command == "HEAD":
            self._record(status)
            return
        sent, event = self._send_body(entry, start, length)
        self._record(status, sent, event)

    def _send_body(self, entry: RepoEntry, start: int, length: int) -> tuple[int, str]:
        """Send the body of a file answer: (bytes sent, the event to record)."""
        return self._copy(entry, start, length), ""

    def _copy(self, entry: RepoEntry, start: int, limit: int) -> int:
        """Write `limit` bytes of `entry` from `start`; the bytes sent (fewer when the client went
        away mid-file: that connection is then closed)."""
        sent = 0
        try:
            while sent < limit:
                block = entry.read(start + sent, min(CHUNK, limit - sent))
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent


class LocalHub(LocalServer):
    """A hub-compatible server on 127.0.0.1 (a free port); a context manager that always stops."""

    thread_name = "local-hub"

    def __init__(
        self, repos: dict[str, Repo] | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        super().__init__(repos, host, port)
        self._switches: list[_Switch] = []

    def _handler(self) -> type[RequestHandler]:
        return _Handler

    def stop(self) -> None:
        """Stop serving (safe to call twice); stalled transfers are released first."""
        self.release()
        super().stop()

    def serve_as_endpoint(self, hf_home: str | Path) -> None:
        """Point huggingface_hub (and `hf` commands started later) at this server, as one points it
        at a mirror.

        Call it before importing huggingface_hub: the library reads these variables once, at
        import."""
        os.environ["HF_ENDPOINT"] = self.url  # exactly how you would point at a mirror
        os.environ["HF_HOME"] = str(hf_home)  # a private cache for this run
        # HF_HUB_OFFLINE=1 would block even 127.0.0.1 (the course's test runner sets it so that
        # nothing reaches the internet); talking to the local hub is fine
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["HF_HUB_DISABLE_XET"] = "1"  # as with any mirror: Xet transfers would bypass it

    def kill_download_midway(
        self, argv: list[str], path: str, local_dir: str | Path, at_bytes: int, timeout: float = 120
    ) -> list[Path]:
        """Run a download command (e.g. `hf download ... --local-dir local_dir`) in its own process
        group, stall the server's transfer of `path` after `at_bytes`, wait until the client's
        partial file holds them, then SIGKILL the whole group: no cleanup code runs, as after a
        crash or a power cut. Returns the partial files left behind (huggingface_hub's
        `*.incomplete`)."""
        from helpers.hub import find_incomplete

        self.stall_next_transfer(at_bytes, path=path)
        env = dict(os.environ, HF_ENDPOINT=self.url, NO_COLOR="1")
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # its own process group: the kill takes its children too
        try:
            deadline = time.time() + timeout
            while time.time() < deadline:
                partial = find_incomplete(local_dir)
                if partial and partial[0].stat().st_size >= at_bytes:
                    break
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.release()
        deadline = time.time() + 10
        while not any(r.event == "stalled" for r in self.file_gets()) and time.time() < deadline:
            time.sleep(
                0.05
            )  # the server logs the stalled transfer once the dead client's connection closes
        return find_incomplete(local_dir)

    # ---- switches that break a transfer on purpose --------------------------------------------

    def cut_next_transfer(self, after_bytes: int, path: str | None = None, times: int = 1) -> None:
        """Drop the connection of the next `times` file GETs (whose path contains `path`) after N
        bytes."""
        with self._lock:
            self._switches.append(_Switch("cut", after_bytes, path, times))

    def stall_next_transfer(self, after_bytes: int, path: str | None = None) -> _Switch:
        """Hang the next file GET after N bytes, until `release()` or stop (to kill a client
        mid-file)."""
        switch = _Switch("stall", after_bytes, path, 1)
        with self._lock:
            self._switches.append(switch)
        return switch

    def release(self) -> None:
        for switch in self._switches:
            switch.released.set()

    def _take_switch(self, path: str) -> _Switch | None:
        with self._lock:
            for switch in self._switches:
                if switch.times > 0 and (switch.path is None or switch.path in path):
                    switch.times -= 1
                    return switch
        return None


class _Handler(RequestHandler):
    owner: LocalHub
    server_version = "qllm-local-hub/1.0"

    def do_POST(self) -> None:
        self._dispatch()

    def _error(
        self, status: int, code: str | None, message: str, commit: str | None = None
    ) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send_json({"error": message}, status, headers)

    def _repo_and_rest(self, parts: list[str]) -> tuple[Repo | None, list[str]]:
        for n in (2, 1):  # "owner/name", or a legacy one-part id
            if len(parts) >= n and "/".join(parts[:n]) in self.owner.repos:
                return self.owner.repos["/".join(parts[:n])], parts[n:]
        return None, parts

    def _revision_ok(self, repo: Repo, revision: str) -> bool:
        return revision in ("main", repo.commit)

    # ---- routes -------------------------------------------------------------------------------

    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if parts[:2] == ["api", "models"]:
            self._api(parts[2:], query)
        elif "resolve" in parts:
            self._resolve(parts)
        else:
            self._error(404, None, "Not found")

    def _api(self, parts: list[str], query: dict) -> None:
        repo, rest = self._repo_and_rest(parts)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return
        revision = "main"
        kind = rest[0] if rest else "info"
        if kind in ("revision", "tree", "paths-info") and len(rest) >= 2:
            revision = rest[1]
        elif kind not in ("info",):
            self._error(404, None, "Not found")
            return
        if not self._revision_ok(repo, revision):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if kind in ("info", "revision") and self.command in ("GET", "HEAD"):
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._send_json(
                {
                    "_id": repo.commit[:24],
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "siblings": [e.sibling(blobs) for e in repo.files.values()],
                }
            )
        elif kind == "tree" and self.command == "GET":
            prefix = "/".join(rest[2:])
            rows = [
                e.tree_row()
                for e in repo.files.values()
                if not prefix or e.path.startswith(prefix + "/")
            ]
            self._send_json(rows)
        elif kind == "paths-info" and self.command == "POST":
            wanted = parse_qs(self.body.decode()).get("paths", [])
            self._send_json([repo.files[p].tree_row() for p in wanted if p in repo.files])
        else:
            self._error(405, None, "Method not allowed")

    def _resolve(self, parts: list[str]) -> None:
        at = parts.index("resolve")
        repo, _ = self._repo_and_rest(parts[:at])
        if repo is None or len(parts) < at + 3:
            self._error(401, "RepoNotFound", "Repository not found")
            return
        revision, filename = parts[at + 1], "/".join(parts[at + 2 :])
        if not self._revision_ok(repo, revision):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        entry = repo.files.get(filename)
        if entry is None:
            self._error(
                404, "EntryNotFound", f'{filename} does not exist on "{revision}"', repo.commit
            )
            return
        headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": repo.commit}
        if entry.lfs:
            headers.update({"X-Linked-Size": str(entry.size), "X-Linked-Etag": f'"{entry.etag}"'})
        self._send_file(entry, headers)

    def _send_body(self, entry: RepoEntry, start: int, length: int) -> tuple[int, str]:
        switch = self.owner._take_switch(entry.path)
        if switch is None:
            return super()._send_body(entry, start, length)
        limit = min(length, switch.after_bytes)
        sent = self._copy(entry, start, limit)
        if sent >= length or sent < limit:  # all of it; or the client went away first
            return sent, ""
        if switch.kind == "stall":  # hold the connection open until released or the client dies
            while not switch.released.wait(0.2):
                pass
        # cut (or a released stall): drop the connection mid-body, as a flaky network would
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        return sent, "cut" if switch.kind == "cut" else "stalled"


def main() -> None:
    """Serve the course repos until Ctrl-C; print how to point the hub client at them."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with LocalHub(port=args.port) as hub:
        print(f"Serving {len(hub.repos)} repos at {hub.url}:")
        for repo_id, repo in hub.repos.items():
            print(
                f"  {repo_id:40} {len(repo.files)} files, "
                f"{sum(e.size for e in repo.files.values()) / 1e6:,.0f} MB"
            )
        print(
            f"\n  export HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1\n"
            f"  hf download {NAMESPACE}/gemma-3-270m-GGUF --include '*Q4_K_M.gguf' "
            "--local-dir ./gguf\n"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()
