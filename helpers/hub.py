"""What is in a Hub repo, and what of it is already here: listing, choosing files, settings, local
records.

    files = list_files("bartowski/Mistral-7B-Instruct-v0.3-GGUF")  # names, sizes, sha256
    pick(files, include="*Q4_K_M.gguf")  # exactly the files you mean, or a clear error
    settings(); use_endpoint("https://hf-mirror.com")  # mirror, cache, token set or not
    find_incomplete("models"); clean_incomplete("models")  # leftovers of interrupted downloads

A thin layer over `huggingface_hub`; downloading is `helpers.downloading`. Settings are read from
the environment at each call, like the `hf` CLI: HF_ENDPOINT (a mirror), HF_HOME / HF_HUB_CACHE
(the cache), HF_TOKEN (sent with each request, never printed). Failures raise a `HubError` that
says what to do.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    CourseError,
    DownloadFailedError,
    HubUnreachableError,
    NoMatchingFilesError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

# What a model folder needs: config, weights (safetensors), tokenizer and chat template files.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
# Weights saved with pickle (torch.save), which can run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES]


def pickle_refusal(source) -> CourseError:
    """The error for a model whose only weights are pickles, when allow_pickle is not set."""
    return CourseError(
        f"{source} has only pickle weights (*.bin/*.pt), which can run code when loaded. "
        "Prefer a safetensors copy of the model; to load these anyway, pass allow_pickle=True "
        "(only for sources you trust)."
    )


# ---- settings ---------------------------------------------------------------------------------


def endpoint() -> str:
    """The hub to talk to: $HF_ENDPOINT (a mirror, or the course's local hub), else
    huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """Where downloads are cached: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub."""
    # not huggingface_hub.constants.HF_HUB_CACHE: fixed at its import, while HF_HOME may change
    # later (each test sets it)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def settings() -> dict:
    """The settings a download will use; the token is only reported as set or not, never shown."""
    from huggingface_hub import constants, get_token

    _sync_env_flags()
    token_set = bool(os.environ.get("HF_TOKEN"))
    # get_token also finds `hf auth login`'s token; an OIDC exchange may raise
    with contextlib.suppress(Exception):
        token_set = token_set or get_token() is not None
    return {
        "endpoint (HF_ENDPOINT)": endpoint(),
        "cache (HF_HOME/hub)": str(hub_cache_dir()),
        "token": "set (hidden)" if token_set else "not set (public repos only)",
        "Xet transfers (HF_HUB_DISABLE_XET)": "off: plain HTTP via the endpoint"
        if constants.HF_HUB_DISABLE_XET
        else "on where the repo uses Xet (bypasses a mirror)",
        "offline (HF_HUB_OFFLINE)": os.environ.get("HF_HUB_OFFLINE", "0"),
    }


@contextlib.contextmanager
def use_endpoint(url: str, disable_xet: bool = True):
    """Inside the with-block, download from `url` (a mirror, or the local hub); then restore the
    settings."""
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    os.environ["HF_ENDPOINT"] = url
    if disable_xet:  # Xet transfers go to Xet's own servers, not through HF_ENDPOINT
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sync_env_flags() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, at import; follow the
    environment now."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET"):
        setattr(constants, name, os.environ.get(name, "").lower() in ("1", "true", "yes", "on"))


# ---- what is in a repo ------------------------------------------------------------------------


@dataclass
class RepoFileInfo:
    """One file of a repo: path, size in bytes, sha256 (LFS files) and git blob id."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    def __repr__(self) -> str:
        return f"RepoFileInfo({self.path!r}, {human_size(self.size)})"


@dataclass
class Listing:
    repo_id: str
    revision: str
    commit: str
    files: list[RepoFileInfo]


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def as_list(patterns) -> list[str] | None:
    return [patterns] if isinstance(patterns, str) else None if patterns is None else list(patterns)


def did_you_mean(wanted: str | list[str], names: list[str]) -> str:
    """The hint " Did you mean 'a', 'b'?" with the up to 3 of `names` closest to one name (best
    first), or to any of several patterns (sorted); "" when none is close."""
    if isinstance(wanted, str):
        close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    else:
        close = sorted(
            {m for w in wanted for m in difflib.get_close_matches(w, names, n=3, cutoff=0.5)}
        )
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def pick(
    files: list[RepoFileInfo], include=None, exclude=None, repo_id: str = ""
) -> list[RepoFileInfo]:
    """The files that `hf download --include ... --exclude ...` would take; error if patterns match
    nothing."""
    # the very filter `hf download --include` uses
    from huggingface_hub.utils import filter_repo_objects

    include, exclude = as_list(include), as_list(exclude)
    chosen = list(
        filter_repo_objects(
            files, allow_patterns=include, ignore_patterns=exclude, key=lambda f: f.path
        )
    )
    if not chosen and files and (include or exclude):
        names = [f.path for f in files]
        hint = did_you_mean(include or [], names)
        shown = ", ".join(names[:12]) + (
            f", ... ({len(names) - 12} more)" if len(names) > 12 else ""
        )
        raise NoMatchingFilesError(
            f"Nothing in {repo_id or 'the repo'} matches include={include} exclude={exclude}."
            f"{hint} The repo has: {shown}. Patterns are shell globs matched against the whole "
            "path (e.g. '*Q4_K_M.gguf', '*.safetensors'); names are case-sensitive."
        )
    return chosen


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str = "main", filename: str | None = None):
    """Around a huggingface_hub call: follow HF_HUB_OFFLINE / HF_HUB_DISABLE_XET as set now, and
    turn its exceptions (and the network's) into HubErrors that say what to do."""
    import httpx2
    from huggingface_hub import errors as hf

    _sync_env_flags()
    where = endpoint()
    try:
        yield
    except hf.GatedRepoError:
        raise RepoNotFoundError(
            f"{repo_id} is a gated repo at {where}: accept its licence on {where}/{repo_id} while "
            "logged in, then make a token (Settings > Access Tokens) and set HF_TOKEN before "
            "starting Python (or run `hf auth login`)."
        ) from None
    except hf.RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"No repo {repo_id!r} at {where} (or it is private and your token does not open it). "
            f"Check the spelling (owner/name, case-sensitive) on {where}/{repo_id}; for a private "
            "repo set HF_TOKEN to a token that can read it."
        ) from None
    except hf.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"{repo_id} has no revision {revision!r} at {where}. Use 'main', a tag, or a "
            f"full commit hash from {where}/{repo_id}/commits/main."
        ) from None
    except hf.RemoteEntryNotFoundError:
        raise NoMatchingFilesError(
            f"{repo_id} has no file {filename!r} at revision {revision!r}. List its files "
            f"with hub.list_files({repo_id!r}) and copy the exact name (case-sensitive)."
        ) from None
    except hf.HFValidationError as err:
        raise RepoNotFoundError(
            f"{repo_id!r} is not a valid repo id ({str(err).splitlines()[0]}). A repo id looks "
            "like 'owner/name', e.g. 'bartowski/Mistral-7B-Instruct-v0.3-GGUF'."
        ) from None
    except hf.OfflineModeIsEnabled:
        raise HubUnreachableError(
            "HF_HUB_OFFLINE=1 is set, so no request leaves this machine (not even to a local "
            "mirror). Files you already downloaded still load; to download, set HF_HUB_OFFLINE=0."
        ) from None
    except (httpx2.ConnectError, httpx2.TimeoutException, hf.LocalEntryNotFoundError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HubUnreachableError(
            f"Cannot reach {where} ({reason}). "
            + (
                f"HF_ENDPOINT is set to {where}: is that mirror up, and are its scheme and port "
                "right? Unset HF_ENDPOINT to use huggingface.co itself. "
                if "HF_ENDPOINT" in os.environ
                else "Check your internet connection, proxy (HTTPS_PROXY) or firewall; where "
                "huggingface.co is blocked, use a mirror: HF_ENDPOINT=https://hf-mirror.com with "
                "HF_HUB_DISABLE_XET=1. "
            )
            + "Files already downloaded keep working offline."
        ) from None
    except (httpx2.RemoteProtocolError, httpx2.ReadError) as err:
        raise DownloadFailedError(
            f"The transfer from {where} broke and did not recover ({str(err)[:160]}). "
            "Nothing incomplete was kept as if complete; run the download again."
        ) from None
    except hf.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise HubUnreachableError(
            f"{where} answered HTTP {status} for {repo_id}{'/' + filename if filename else ''}. "
            "If it is a 5xx the hub or mirror is having trouble: retry later. A 401/403 means the "
            "token is missing or lacks access: set HF_TOKEN."
        ) from None
    except OSError as err:
        if "Consistency check failed" in str(err):
            raise DownloadFailedError(
                f"A file from {repo_id} arrived with the wrong size (the connection broke). "
                "Nothing incomplete was kept; run the download again."
            ) from None
        raise


def remote_listing(repo_id: str, revision: str = "main") -> Listing:
    from huggingface_hub import HfApi

    # one request: sizes, sha256, blob ids and the commit (list_repo_tree lacks it)
    with hub_errors(repo_id, revision):
        info = HfApi(endpoint=endpoint()).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    files = [
        RepoFileInfo(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, s.blob_id)
        for s in info.siblings or []
    ]
    return Listing(repo_id, revision, info.sha, sorted(files, key=lambda f: f.path))


def list_files(
    repo_id: str, include=None, exclude=None, revision: str = "main"
) -> list[RepoFileInfo]:
    """A repo's files with sizes (and sha256 for LFS files), optionally filtered like
    `--include`."""
    return pick(remote_listing(repo_id, revision).files, include, exclude, repo_id)


# ---- where files land, and what is already there ----------------------------------------------


def storage_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def base_dir(repo_id: str, commit: str, local_dir) -> Path:
    """Where the repo's files end up: the local folder, or the cache's snapshot folder for that
    commit."""
    return (
        Path(local_dir).expanduser().resolve()
        if local_dir is not None
        else storage_folder(repo_id) / "snapshots" / commit
    )


def present(base: Path, file: RepoFileInfo) -> bool:
    path = base / file.path
    return path.is_file() and path.stat().st_size == file.size


def cached_listing(repo_id: str, revision: str, local_dir) -> Listing | None:
    """The listing huggingface_hub stored at the last download (no network), or None."""
    from huggingface_hub import errors as hf
    from huggingface_hub import get_cached_repo_tree

    try:
        entries = get_cached_repo_tree(
            repo_id, revision=revision, cache_dir=hub_cache_dir(), local_dir=local_dir
        )
    except (hf.CachedRepoTreeNotFoundError, hf.HFValidationError, OSError, ValueError):
        return None
    refs = storage_folder(repo_id) / "refs" / revision
    commit = refs.read_text().strip() if refs.is_file() else revision
    files = [RepoFileInfo(e.path, e.size, None, e.blob_id) for e in entries]
    return Listing(repo_id, revision, commit, sorted(files, key=lambda f: f.path))


def local_file_record(repo_id: str, filename: str, revision: str, local_dir) -> Path | None:
    """A single file fetched earlier with hf_hub_download (no tree listing stored), or None."""
    if local_dir is None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=hub_cache_dir(), revision=revision
        )
        if not isinstance(found, str):
            return None
        # The snapshot link is made once its blob is complete: a blob changed after that (cut short,
        # overwritten) does not count. The same rule as the local_dir record below.
        path = Path(found)
        with contextlib.suppress(OSError):
            return path if path.stat().st_mtime - 1 <= path.lstat().st_mtime else None
        return None
    # huggingface_hub writes .cache/huggingface/download/<file>.metadata (commit, etag, time) only
    # after a complete download; a file changed since then does not count. Read-only: no lock, no
    # mkdir.
    local_dir = Path(local_dir).expanduser().resolve()
    path = local_dir / filename
    meta = local_dir / ".cache" / "huggingface" / "download" / f"{filename}.metadata"
    try:
        written = float(meta.read_text().splitlines()[2])
        return path if path.stat().st_mtime - 1 <= written else None
    except (OSError, IndexError, ValueError):
        return None


def find_incomplete(path) -> list[Path]:
    """Partial files (`*.incomplete`) left under `path` by interrupted downloads."""
    path = Path(path).expanduser()
    return sorted(p for p in path.rglob("*.incomplete") if p.is_file()) if path.exists() else []


def clean_incomplete(path, older_than_s: float = 60.0) -> tuple[int, int]:
    """Delete `*.incomplete` files under `path` untouched for `older_than_s` (a live download is
    spared).

    huggingface_hub 2.x names each partial file uniquely per process, so a rerun never resumes one
    left by a killed process: these files are dead weight. Returns (files, bytes) removed.
    """
    count = size = 0
    for part in find_incomplete(path):
        stat = part.stat()
        if time.time() - stat.st_mtime >= older_than_s:
            part.unlink(missing_ok=True)
            count, size = count + 1, size + stat.st_size
    return count, size
