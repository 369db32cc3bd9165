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
`RepoEntry`), served in place, never copied, and so is the server (`LocalServer`: start and stop,
kept-alive connections, Range, the JSON reply): only ModelScope's API is written here. Every request
is recorded in `server.requests` (method, path, status, Range, bytes sent).
"""

from __future__ import annotations

import os
from pathlib import Path

from .local_hub import LocalServer, RequestHandler, RequestRecord

BRANCH = "master"  # ModelScope's default branch (the Hub's is "main")


class Request(RequestRecord):
    """A request the server saw (local_hub's record); a file GET is ModelScope's `repo?FilePath=`
    call."""

    @property
    def is_file_get(self) -> bool:
        return self.method == "GET" and "FilePath=" in self.path


class LocalModelScope(LocalServer):
    """A ModelScope-API server on 127.0.0.1 (a free port); a context manager that always stops."""

    thread_name = "local-modelscope"
    requests: list[Request]

    def _handler(self) -> type[RequestHandler]:
        return _Handler

    def serve_as_endpoint(self, home: str | Path) -> None:
        """Point `modelscope` at this server, with its cache and config under `home`. Call it before
        the first ModelScope call of the process: the client reads these variables once."""
        os.environ["MODELSCOPE_ENDPOINT"] = self.url  # as for any other ModelScope endpoint
        os.environ["MODELSCOPE_CACHE"] = str(Path(home) / "cache")
        os.environ["MODELSCOPE_HOME"] = str(Path(home) / "config")  # where it keeps a session id


class _Handler(RequestHandler):
    owner: LocalModelScope
    server_version = "qllm-local-modelscope/1.0"
    record_type = Request

    def _envelope(self, data, status: int) -> dict:
        return {
            "Code": status,
            "Data": data,
            "Message": "success" if status == 200 else data,
            "RequestId": "local",
            "Success": status == 200,
        }

    def _route(self, parts: list[str], query: dict[str, list[str]]) -> None:
        query = {key: values[0] for key, values in query.items()}
        if parts[:3] != ["api", "v1", "models"] or len(parts) < 5:
            self._send_json("Not found", 404)
            return
        repo = self.owner.repos.get("/".join(parts[3:5]))
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
            entry = repo.files.get(query["FilePath"])
            if entry is None:
                self._send_json(f"file {query['FilePath']} does not exist", 404)
            else:
                self._send_file(entry)
        else:
            self._send_json("Not found", 404)
