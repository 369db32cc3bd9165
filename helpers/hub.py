"""Choose, size-check and download model files from the Hugging Face Hub or a mirror, local-first.

    files = list_files("bartowski/Mistral-7B-Instruct-v0.3-GGUF")           # names, sizes, sha256
    plan = estimate(repo, include="*Q4_K_M.gguf", local_dir="models/gguf")  # bytes vs free disk
    got = download(repo, include="*Q4_K_M.gguf", local_dir="models/gguf")   # progress bar, sha256 checked
    print(got.cli)                                                          # the same as an `hf download` line

A thin layer over `huggingface_hub` (`snapshot_download` / `hf_hub_download` do the transfer). Settings are read
from the environment at each call, like the `hf` CLI: HF_ENDPOINT (a mirror), HF_HOME / HF_HUB_CACHE (the cache),
HF_TOKEN (sent with each request, never printed). Files already in place at their listed size are not fetched
again, and no request is made. Failures raise a `HubError` that says what to do; a file whose size or sha256
does not match is deleted, so nothing half-written is ever left looking complete.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import (AmbiguousFilesError, CourseError, DownloadFailedError, HubUnreachableError, NoMatchingFilesError,
                     NotEnoughDiskError, RepoNotFoundError, RevisionNotFoundError)

# What a model folder needs: config, weights (safetensors), tokenizer and chat template files.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]


# ---- settings ---------------------------------------------------------------------------------

def endpoint() -> str:
    """The hub to talk to: $HF_ENDPOINT (a mirror, or the course's local hub), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """Where downloads are cached: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    # not huggingface_hub.constants.HF_HUB_CACHE: fixed at its import, while HF_HOME may change later (each test sets it)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def settings() -> dict:
    """The settings a download will use; the token is only reported as set or not, never shown."""
    from huggingface_hub import constants, get_token

    _sync_env_flags()
    token_set = bool(os.environ.get("HF_TOKEN"))
    with contextlib.suppress(Exception):  # get_token also finds `hf auth login`'s token; an OIDC exchange may raise
        token_set = token_set or get_token() is not None
    return {"endpoint (HF_ENDPOINT)": endpoint(), "cache (HF_HOME/hub)": str(hub_cache_dir()),
            "token": "set (hidden)" if token_set else "not set (public repos only)",
            "Xet transfers (HF_HUB_DISABLE_XET)": "off: plain HTTP via the endpoint" if constants.HF_HUB_DISABLE_XET
            else "on where the repo uses Xet (bypasses a mirror)",
            "offline (HF_HUB_OFFLINE)": os.environ.get("HF_HUB_OFFLINE", "0")}


@contextlib.contextmanager
def use_endpoint(url: str, disable_xet: bool = True):
    """Inside the with-block, download from `url` (a mirror, or the local hub); then restore the settings."""
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
    """huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, at import; follow the environment now."""
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
        return f"RepoFileInfo({self.path!r}, {_human(self.size)})"


@dataclass
class _Listing:
    repo_id: str
    revision: str
    commit: str
    files: list[RepoFileInfo]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def _as_list(patterns) -> list[str] | None:
    return [patterns] if isinstance(patterns, str) else None if patterns is None else list(patterns)


def pick(files: list[RepoFileInfo], include=None, exclude=None, repo_id: str = "") -> list[RepoFileInfo]:
    """The files that `hf download --include ... --exclude ...` would take; error if patterns match nothing."""
    from huggingface_hub.utils import filter_repo_objects  # the very filter `hf download --include` uses

    include, exclude = _as_list(include), _as_list(exclude)
    chosen = list(filter_repo_objects(files, allow_patterns=include, ignore_patterns=exclude, key=lambda f: f.path))
    if not chosen and files and (include or exclude):
        names = [f.path for f in files]
        close = sorted({m for p in (include or []) for m in difflib.get_close_matches(p, names, n=3, cutoff=0.5)})
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
        raise NoMatchingFilesError(
            f"Nothing in {repo_id or 'the repo'} matches include={include} exclude={exclude}.{hint} The repo has: "
            f"{shown}. Patterns are shell globs matched against the whole path (e.g. '*Q4_K_M.gguf', "
            "'*.safetensors'); names are case-sensitive.")
    return chosen


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str = "main", filename: str | None = None):
    """Around a huggingface_hub call: follow HF_HUB_OFFLINE / HF_HUB_DISABLE_XET as set now, and turn its
    exceptions (and the network's) into HubErrors that say what to do."""
    import httpx2
    from huggingface_hub import errors as hf

    _sync_env_flags()
    where = endpoint()
    try:
        yield
    except hf.GatedRepoError:
        raise RepoNotFoundError(
            f"{repo_id} is a gated repo at {where}: accept its licence on {where}/{repo_id} while logged in, then "
            "make a token (Settings > Access Tokens) and set HF_TOKEN before starting Python (or run `hf auth "
            "login`).") from None
    except hf.RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"No repo {repo_id!r} at {where} (or it is private and your token does not open it). Check the spelling "
            f"(owner/name, case-sensitive) on {where}/{repo_id}; for a private repo set HF_TOKEN to a token that "
            "can read it.") from None
    except hf.RevisionNotFoundError:
        raise RevisionNotFoundError(f"{repo_id} has no revision {revision!r} at {where}. Use 'main', a tag, or a "
                                    f"full commit hash from {where}/{repo_id}/commits/main.") from None
    except hf.RemoteEntryNotFoundError:
        raise NoMatchingFilesError(f"{repo_id} has no file {filename!r} at revision {revision!r}. List its files "
                                   f"with hub.list_files({repo_id!r}) and copy the exact name (case-sensitive).") from None
    except hf.HFValidationError as err:
        raise RepoNotFoundError(f"{repo_id!r} is not a valid repo id ({str(err).splitlines()[0]}). A repo id looks "
                                "like 'owner/name', e.g. 'bartowski/Mistral-7B-Instruct-v0.3-GGUF'.") from None
    except hf.OfflineModeIsEnabled:
        raise HubUnreachableError(
            "HF_HUB_OFFLINE=1 is set, so no request leaves this machine (not even to a local mirror). Files you "
            "already downloaded still load; to download, set HF_HUB_OFFLINE=0.") from None
    except (httpx2.ConnectError, httpx2.TimeoutException, hf.LocalEntryNotFoundError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise HubUnreachableError(
            f"Cannot reach {where} ({reason}). "
            + (f"HF_ENDPOINT is set to {where}: is that mirror up, and are its scheme and port right? Unset "
               "HF_ENDPOINT to use huggingface.co itself. " if "HF_ENDPOINT" in os.environ else
               "Check your internet connection, proxy (HTTPS_PROXY) or firewall; where huggingface.co is blocked, "
               "use a mirror: HF_ENDPOINT=https://hf-mirror.com with HF_HUB_DISABLE_XET=1. ")
            + "Files already downloaded keep working offline.") from None
    except (httpx2.RemoteProtocolError, httpx2.ReadError) as err:
        raise DownloadFailedError(
            f"The transfer from {where} broke and did not recover ({str(err)[:160]}). Nothing incomplete was kept "
            "as if complete; run the download again.") from None
    except hf.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise HubUnreachableError(
            f"{where} answered HTTP {status} for {repo_id}{'/' + filename if filename else ''}. If it is a 5xx the "
            "hub or mirror is having trouble: retry later. A 401/403 means the token is missing or lacks access: "
            "set HF_TOKEN.") from None
    except OSError as err:
        if "Consistency check failed" in str(err):
            raise DownloadFailedError(f"A file from {repo_id} arrived with the wrong size (the connection broke). "
                                      "Nothing incomplete was kept; run the download again.") from None
        raise


def _remote_listing(repo_id: str, revision: str = "main") -> _Listing:
    from huggingface_hub import HfApi

    with hub_errors(repo_id, revision):  # one request: sizes, sha256, blob ids and the commit (list_repo_tree lacks it)
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision, files_metadata=True)
    files = [RepoFileInfo(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, s.blob_id)
             for s in info.siblings or []]
    return _Listing(repo_id, revision, info.sha, sorted(files, key=lambda f: f.path))


def list_files(repo_id: str, include=None, exclude=None, revision: str = "main") -> list[RepoFileInfo]:
    """A repo's files with sizes (and sha256 for LFS files), optionally filtered like `--include`."""
    return pick(_remote_listing(repo_id, revision).files, include, exclude, repo_id)


# ---- where files land, and what is already there ----------------------------------------------

def _storage_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _base_dir(repo_id: str, commit: str, local_dir) -> Path:
    """Where the repo's files end up: the local folder, or the cache's snapshot folder for that commit."""
    return Path(local_dir).expanduser().resolve() if local_dir is not None else \
        _storage_folder(repo_id) / "snapshots" / commit


def _present(base: Path, file: RepoFileInfo) -> bool:
    path = base / file.path
    return path.is_file() and path.stat().st_size == file.size


def _cached_listing(repo_id: str, revision: str, local_dir) -> _Listing | None:
    """The listing huggingface_hub stored at the last download (no network), or None."""
    from huggingface_hub import errors as hf
    from huggingface_hub import get_cached_repo_tree

    try:
        entries = get_cached_repo_tree(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_dir=local_dir)
    except (hf.CachedRepoTreeNotFoundError, hf.HFValidationError, OSError, ValueError):
        return None
    refs = _storage_folder(repo_id) / "refs" / revision
    commit = refs.read_text().strip() if refs.is_file() else revision
    files = [RepoFileInfo(e.path, e.size, None, e.blob_id) for e in entries]
    return _Listing(repo_id, revision, commit, sorted(files, key=lambda f: f.path))


def _local_file_record(repo_id: str, filename: str, revision: str, local_dir) -> Path | None:
    """A single file fetched earlier with hf_hub_download (no tree listing stored), or None."""
    if local_dir is None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
        if not isinstance(found, str):
            return None
        # The snapshot link is made once its blob is complete: a blob changed after that (cut short,
        # overwritten) does not count. The same rule as the local_dir record below.
        path = Path(found)
        with contextlib.suppress(OSError):
            return path if path.stat().st_mtime - 1 <= path.lstat().st_mtime else None
        return None
    # huggingface_hub writes .cache/huggingface/download/<file>.metadata (commit, etag, time) only
    # after a complete download; a file changed since then does not count. Read-only: no lock, no mkdir.
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
    """Delete `*.incomplete` files under `path` untouched for `older_than_s` (a live download is spared).

    huggingface_hub 2.x names each partial file uniquely per process, so a rerun never resumes one left by a
    killed process: these files are dead weight. Returns (files, bytes) removed.
    """
    count = size = 0
    for part in find_incomplete(path):
        stat = part.stat()
        if time.time() - stat.st_mtime >= older_than_s:
            part.unlink(missing_ok=True)
            count, size = count + 1, size + stat.st_size
    return count, size


# ---- size before downloading -----------------------------------------------------------------

def free_disk_bytes(path) -> int:
    """Free disk at `path` (or at its nearest existing parent, if it does not exist yet)."""
    path = Path(path).expanduser().resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def cli_command(repo_id: str, filename: str | None = None, include=None, exclude=None, local_dir=None,
                revision: str = "main") -> str:
    """The `hf download` command line that does what the helper call does."""
    parts = ["hf", "download", repo_id] + ([filename] if filename else [])
    for flag, patterns in (("--include", _as_list(include)), ("--exclude", _as_list(exclude))):
        for pattern in patterns or []:
            parts += [flag, f'"{pattern}"']
    parts += ["--revision", revision] if revision != "main" else []
    return " ".join(parts + (["--local-dir", str(local_dir)] if local_dir is not None else []))


@dataclass
class DownloadPlan:
    """What a download would fetch, and whether it fits: made by `estimate`, checked before a download."""

    repo_id: str
    revision: str
    commit: str
    files: list[RepoFileInfo]
    dest: Path
    total_bytes: int
    present_bytes: int
    free_bytes: int
    cli: str

    @property
    def need_bytes(self) -> int:
        return self.total_bytes - self.present_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes

    def check(self) -> "DownloadPlan":
        """Raise NotEnoughDiskError (before anything is written) if the files do not fit."""
        if not self.fits:
            raise NotEnoughDiskError(
                f"Not downloading {self.repo_id}: the {len(self.files)} chosen file(s) need {_human(self.need_bytes)} "
                f"and only {_human(self.free_bytes)} is free at {self.dest}. Free some space, download to another "
                "disk (local_dir=..., or HF_HOME for the cache), or take fewer files with include=... (one GGUF "
                "quantization instead of the whole repo).")
        return self

    def __repr__(self) -> str:
        return (f"DownloadPlan({self.repo_id}: {len(self.files)} files, {_human(self.total_bytes)}, "
                f"{_human(self.present_bytes)} already there, {_human(self.free_bytes)} free at {self.dest}, "
                f"fits={self.fits})")


def _plan(listing: _Listing, chosen: list[RepoFileInfo], local_dir, free_bytes, cli: str) -> DownloadPlan:
    base = _base_dir(listing.repo_id, listing.commit, local_dir)
    dest = base if local_dir is not None else hub_cache_dir()
    present = sum(f.size for f in chosen if _present(base, f))
    free = free_disk_bytes(dest) if free_bytes is None else int(free_bytes)
    return DownloadPlan(listing.repo_id, listing.revision, listing.commit, chosen, dest,
                        sum(f.size for f in chosen), present, free, cli)


def estimate(repo_id: str, include=None, exclude=None, local_dir=None, revision: str = "main",
             filename: str | None = None, free_bytes: int | None = None) -> DownloadPlan:
    """Bytes of the chosen files vs free disk at the destination (asks the hub; downloads nothing)."""
    listing = _remote_listing(repo_id, revision)
    return _plan(listing, _choose(listing, filename, include, exclude), local_dir, free_bytes,
                 cli_command(repo_id, filename, include, exclude, local_dir, revision))


def _choose(listing: _Listing, filename, include, exclude) -> list[RepoFileInfo]:
    if filename is None:
        return pick(listing.files, include, exclude, listing.repo_id)
    chosen = [f for f in listing.files if f.path == filename]
    if not chosen:
        names = [f.path for f in listing.files]
        close = difflib.get_close_matches(filename, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise NoMatchingFilesError(
            f"{listing.repo_id} has no file {filename!r}.{hint} Its files: {', '.join(names[:12])}"
            f"{' ...' if len(names) > 12 else ''}. Names are case-sensitive; to pick by pattern use "
            "include='*Q4_K_M.gguf'.")
    return chosen


# ---- download -------------------------------------------------------------------------------

@dataclass
class DownloadResult:
    """What a download did: where the files are, how many bytes, whether they were fetched or already there."""

    repo_id: str
    commit: str
    path: Path  # the local folder / snapshot folder, or the file for a single-file download
    files: list[RepoFileInfo]
    total_bytes: int
    fetched_bytes: int
    seconds: float
    already_local: bool
    verified: bool
    cli: str
    orphans: list[Path]  # *.incomplete files left by an interrupted download

    def __repr__(self) -> str:
        how = "already there, not fetched" if self.already_local else (
            f"fetched {_human(self.fetched_bytes)} in {self.seconds:.1f} s")
        return (f"DownloadResult({self.repo_id}: {len(self.files)} files, {_human(self.total_bytes)}, {how}, "
                f"verified={self.verified}, path='{self.path}')")


def _local_first(repo_id, revision, filename, include, exclude, local_dir):
    """(listing, chosen, base) when every chosen file is already in place, else None. No network."""
    listing = _cached_listing(repo_id, revision, local_dir)
    if listing is not None:
        try:
            chosen = _choose(listing, filename, include, exclude)
        except NoMatchingFilesError:
            chosen = []
        base = _base_dir(repo_id, listing.commit, local_dir)
        if chosen and all(_present(base, f) for f in chosen):
            return listing, chosen, base
    if filename is not None:
        found = _local_file_record(repo_id, filename, revision, local_dir)
        if found is not None:
            info = RepoFileInfo(filename, found.stat().st_size)
            # in the cache: snapshots/<commit>/<filename>, and the filename may sit in a repo folder
            base = found.parents[len(Path(filename).parts) - 1] if local_dir is None else \
                Path(local_dir).expanduser().resolve()
            commit = base.name if local_dir is None else ""
            return _Listing(repo_id, revision, commit, [info]), [info], base
    return None


def download(repo_id: str, include=None, exclude=None, local_dir=None, revision: str = "main", force: bool = False,
             verify: bool = True, free_bytes: int | None = None, quiet: bool = False,
             filename: str | None = None) -> DownloadResult:
    """Download the repo's files that match `include`/`exclude` (all by default), or one `filename`, local-first.

    local_dir=None keeps them in the hub cache (HF_HOME), shared by every library; a folder gets plain files.
    Free disk is checked before anything is written, sizes and sha256 after; `force=True` fetches again.
    """
    say = print if not quiet else (lambda text: None)
    cli, started = cli_command(repo_id, filename, include, exclude, local_dir, revision), time.perf_counter()
    found = None if force else _local_first(repo_id, revision, filename, include, exclude, local_dir)
    if found is not None:
        listing, chosen, base = found
        total = sum(f.size for f in chosen)
        say(f"{repo_id}: {len(chosen)} file(s), {_human(total)}, already in {base}; not fetching (force=True "
            "fetches again).")
        return DownloadResult(repo_id, listing.commit, base / filename if filename else base, chosen, total, 0,
                              time.perf_counter() - started, True, False, cli, find_incomplete(base))
    plan = estimate(repo_id, include, exclude, local_dir, revision, filename, free_bytes).check()
    say(f"{repo_id}: {len(plan.files)} file(s), {_human(plan.total_bytes)} ({_human(plan.need_bytes)} to fetch) "
        f"from {endpoint()} into {plan.dest} ({_human(plan.free_bytes)} free)")
    from huggingface_hub import hf_hub_download, snapshot_download

    # For a commit hash huggingface_hub trusts a cached snapshot file as it is: remove one of the wrong size.
    base = _base_dir(repo_id, plan.commit, local_dir)
    for f in plan.files:
        if ((base / f.path).is_file() or (base / f.path).is_symlink()) and not _present(base, f):
            _remove(base / f.path)
    # by commit hash: exactly the files listed and size-checked above, even if the branch moves meanwhile
    common = dict(revision=plan.commit, endpoint=endpoint(), cache_dir=hub_cache_dir(), force_download=force)
    if local_dir is not None:
        common["local_dir"] = plan.dest
    with hub_errors(repo_id, revision, filename):
        if filename:
            hf_hub_download(repo_id, filename, **common)
        else:
            snapshot_download(repo_id, allow_patterns=[f.path for f in plan.files], **common)
    refs = _storage_folder(repo_id) / "refs" / revision  # where huggingface_hub records a branch it resolved itself:
    if revision != plan.commit and (not refs.is_file() or refs.read_text().strip() != plan.commit):  # local-first
        refs.parent.mkdir(parents=True, exist_ok=True)  # (no network) reads it to find this branch's files
        refs.write_text(plan.commit)
    _check_files(base, plan.files, verify)
    seconds = time.perf_counter() - started
    orphans = find_incomplete(base if local_dir is not None else _storage_folder(repo_id))
    say(f"  done: {_human(plan.need_bytes)} in {seconds:.1f} s" + (", sizes and checksums verified" if verify
        else ", sizes checked") + (f"; {len(orphans)} orphan *.incomplete file(s) from an interrupted download "
                                   "(hub.clean_incomplete deletes them)" if orphans else ""))
    return DownloadResult(repo_id, plan.commit, base / filename if filename else base, plan.files, plan.total_bytes,
                          plan.need_bytes, seconds, False, verify, cli, orphans)


def download_file(repo_id: str, filename: str, local_dir=None, revision: str = "main", force: bool = False,
                  verify: bool = True, free_bytes: int | None = None, quiet: bool = False) -> DownloadResult:
    """Download one file by its exact name (`hf_hub_download`), local-first; result.path is the file."""
    return download(repo_id, None, None, local_dir, revision, force, verify, free_bytes, quiet, filename)


def sha256_file(path) -> str:
    """The hex sha256 of a file, read in pieces: what the hub lists for a large (LFS) file."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as handle:
        return sha_fileobj(handle, 8 * 2**20).hex()


def _check_files(base: Path, files: list[RepoFileInfo], verify: bool) -> None:
    """Sizes always, sha256 (or git blob id) if `verify`; a bad file is deleted, never left looking complete."""
    from huggingface_hub.utils.sha import git_hash

    for f in files:
        path = base / f.path
        problem = None
        if not path.is_file():
            problem = "is missing after the download"
        elif path.stat().st_size != f.size:
            problem = f"has {path.stat().st_size:,} bytes, expected {f.size:,}"
        elif verify and f.sha256 and sha256_file(path) != f.sha256:
            problem = f"has the wrong sha256 (expected {f.sha256[:16]}…)"
        elif verify and not f.sha256 and f.blob_id and f.size < 10 * 2**20 and git_hash(path.read_bytes()) != f.blob_id:
            problem = "does not match its git blob id"
        if problem:
            _remove(path)
            raise DownloadFailedError(
                f"{f.path} {problem}; it was deleted so that nothing broken looks complete. The transfer was probably "
                "corrupted (a flaky network, proxy or mirror): run the download again; if it repeats, try another "
                "endpoint (HF_ENDPOINT) or unset it.")


def _remove(path: Path) -> None:
    if path.is_symlink():  # a cache snapshot entry: remove the blob it points to as well
        path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


# ---- a model, for load_model -----------------------------------------------------------------

def choose_model_files(files: list[RepoFileInfo], allow_pickle: bool = False, gguf_file: str | None = None,
                       repo_id: str = "") -> list[RepoFileInfo]:
    """The files load_model needs: config + safetensors + tokenizer files, or exactly one .gguf file."""
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    names = {f.path for f in files}
    has_weights = any(f.path.endswith(".safetensors") for f in files)
    has_pickle = any(f.path.endswith((".bin", ".pt", ".pth")) for f in files)
    if gguf_file is not None or (ggufs and not ("config.json" in names and (has_weights or has_pickle))):
        chosen = pick(ggufs, include=gguf_file, repo_id=repo_id) if gguf_file else ggufs
        if not chosen:
            raise NoMatchingFilesError(f"{repo_id} has no .gguf file matching {gguf_file!r}.")
        if len(chosen) > 1:
            listed = ", ".join(f"{f.path} ({_human(f.size)})" for f in chosen[:10])
            raise AmbiguousFilesError(
                f"{repo_id} holds {len(chosen)} GGUF files; choose one with gguf_file='*Q4_K_M.gguf' (a pattern or "
                f"the exact name), or download it with hub.download_file and pass its path to load_model. "
                f"Candidates: {listed}{' ...' if len(chosen) > 10 else ''}.")
        return chosen
    if "config.json" not in names:
        raise NoMatchingFilesError(f"{repo_id} has neither config.json nor a .gguf file, so it is not a model repo "
                                   f"the course can load. Files: {', '.join(sorted(names)[:12])}.")
    if not has_weights and has_pickle and not allow_pickle:
        raise CourseError(
            f"{repo_id} has only pickle weights (*.bin/*.pt), which can run code when loaded. Prefer a safetensors "
            "copy of the model; to load these anyway, pass allow_pickle=True (only for sources you trust).")
    chosen = pick(files, include=MODEL_FILE_PATTERNS + (PICKLE_PATTERNS if allow_pickle and not has_weights else []),
                  repo_id=repo_id)
    if not any(f.path.endswith((".safetensors", ".bin", ".pt", ".pth")) for f in chosen):
        raise NoMatchingFilesError(f"{repo_id} has a config.json but no weights (*.safetensors).")
    return chosen


def download_model(repo_id: str, allow_pickle: bool = False, gguf_file: str | None = None,
                   local_dir=None, revision: str = "main", **kw) -> Path:
    """Fetch (or reuse) what load_model needs from a hub id: a model folder, or the chosen .gguf file."""
    listing = (None if kw.get("force") else _cached_listing(repo_id, revision, local_dir)) or \
        _remote_listing(repo_id, revision)
    chosen = choose_model_files(listing.files, allow_pickle, gguf_file, repo_id)
    result = download(repo_id, include=[f.path for f in chosen], local_dir=local_dir, revision=revision, **kw)
    return result.path / chosen[0].path if len(chosen) == 1 and chosen[0].path.endswith(".gguf") else result.path
