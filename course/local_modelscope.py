"""A local server for ModelScope's download API (standard library only), for notebook 01 and the
tests.

    with LocalModelScope() as ms:             # the course's repos, 127.0.0.1, a free port
        os.environ["MODELSCOPE_ENDPOINT"] = ms.url   # exactly how you point `modelscope` elsewhere
        snapshot_download(repo, allow_patterns=["*Q4_K_M.gguf"], local_dir="gguf")

It answers only what the `modelscope` client (1.40, through `modelscope-hub`) asks when it lists and
downloads a model repo, all under `/api/v1/models/{owner}/{name}`:

    GET .../repo/files?Revision=master&Recursive=True  the file list: Path, Name, Type, Size, Sha256
    GET .../repo?Revision=master&FilePath=<path>       one file, with Range (206 + Content-Range)
    GET ...                                            repo info
    GET .../revisions                                  the one branch, master

in ModelScope's JSON envelope (`{"Code": 200, "Data": ..., "Success": true}`); an unknown repo,
revision or file is a 404, which the client raises as `NotExistError`. Anything else is a 404 too,
among them the client's probe for Alibaba Cloud's internal network
(`/api/v1/repos/internalAccelerationInfo`). The repos are `course.local_hub`'s (`Repo`,
`RepoEntry`), served in place, never copied. Every request is recorded in `server.requests`
(method, path, status, Range, bytes sent).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .local_hub import CHUNK, LocalServer, Repo, RequestRecord, course_repos

BRANCH = "master"  # ModelScope's default branch (the Hub's is "main")


class Request(RequestRecord):
    """A request the server saw (local_hub's record); a file GET is ModelScope's `repo?FilePath=`
    call."""

    @property
    def is_file_get(self) -> bool:
        return self.method == "GET" and "FilePath=" in self.path


class LocalModelScope(LocalServer):
    """A ModelScope-API server on 127.0.0.1 (a free port); a context manager that always stops."""

    def __init__(
        self, repos: dict[str, Repo] | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.repos = course_repos() if repos is None else repos
        self.host, self.port = host, port
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> LocalModelScope:
        if self._server is None:
            handler = type("Handler", (_Handler,), {"ms": self})
            self._server = ThreadingHTTPServer((self.host, self.port), handler)
            self._server.daemon_threads = True
            self.port = self._server.server_address[1]
            threading.Thread(
                target=self._server.serve_forever, name="local-modelscope", daemon=True
            ).start()
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            atexit.unregister(self.stop)

    def __repr__(self) -> str:
        return (
            f"LocalModelScope({self.url}, {'running' if self._server else 'stopped'}, "
            f"repos={sorted(self.repos)})"
        )

    def serve_as_endpoint(self, home: str | Path) -> None:
        """Point `modelscope` at this server, with its cache and config under `home`. Call it before
        the first ModelScope call of the process: the client reads these variables once."""
        os.environ["MODELSCOPE_ENDPOINT"] = self.url  # as for any other ModelScope endpoint
        os.environ["MODELSCOPE_CACHE"] = str(Path(home) / "cache")
        os.environ["MODELSCOPE_HOME"] = str(Path(home) / "config")  # where it keeps a session id


class _Handler(BaseHTTPRequestHandler):
    ms: LocalModelScope
    protocol_version = "HTTP/1.1"
    server_version = "qllm-local-modelscope/1.0"

    def log_message(self, *args) -> None:  # quiet: the request list is the log
        pass

    def _record(self, status: int, sent: int = 0) -> None:
        with self.ms._lock:
            self.ms.requests.append(
                Request(self.command, self.path, status, self.headers.get("Range"), sent)
            )

    def _send_json(self, data, status: int = 200) -> None:
        body = json.dumps(
            {
                "Code": status,
                "Data": data,
                "Message": "success" if status == 200 else data,
                "RequestId": "local",
                "Success": status == 200,
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, len(body))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        try:
            if parts[:3] != ["api", "v1", "models"] or len(parts) < 5:
                self._send_json("Not found", 404)
                return
            repo = self.ms.repos.get("/".join(parts[3:5]))
            if repo is None:
                self._send_json(f"model {'/'.join(parts[3:5])} does not exist", 404)
                return
            if query.get("Revision", BRANCH) not in (BRANCH, repo.commit):
                self._send_json(f"revision {query['Revision']} does not exist", 404)
                return
            rest = parts[5:]
            if not rest:
                self._send_json(
                    {
                        "Path": repo.repo_id.split("/")[0],
                        "Name": repo.repo_id.split("/")[1],
                        "Revision": BRANCH,
                    }
                )
            elif rest == ["revisions"]:
                self._send_json(
                    {
                        "RevisionMap": {
                            "Branches": [{"Revision": BRANCH, "CreatedAt": 0}],
                            "Tags": [],
                        }
                    }
                )
            elif rest == ["repo", "files"]:
                self._send_json(
                    {
                        "Files": [
                            {
                                "Name": Path(e.path).name,
                                "Path": e.path,
                                "Type": "blob",
                                "Size": e.size,
                                "Sha256": e.sha256,
                                "Revision": repo.commit,
                                "IsLFS": e.lfs,
                            }
                            for e in repo.files.values()
                        ]
                    }
                )
            elif rest == ["repo"] and "FilePath" in query:
                self._send_file(repo, query["FilePath"])
            else:
                self._send_json("Not found", 404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _send_file(self, repo: Repo, path: str) -> None:
        entry = repo.files.get(path)
        if entry is None:
            self._send_json(f"file {path} does not exist", 404)
            return
        start, status = 0, 200
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-") and wanted[6:-1].isdigit():
            start, status = (
                int(wanted[6:-1]),
                206,
            )  # the client only ever asks "from byte N to the end"
            if start >= entry.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entry.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(416)
                return
        length = entry.size - start
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{entry.size - 1}/{entry.size}")
        self.end_headers()
        sent = 0
        with contextlib.suppress(
            BrokenPipeError, ConnectionResetError
        ):  # the client may go away mid-file
            while self.command == "GET" and sent < length:
                block = entry.read(start + sent, min(CHUNK, length - sent))
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
        self._record(status, sent)
