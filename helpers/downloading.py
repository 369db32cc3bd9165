"""Size-check and download model files from the Hugging Face Hub or a mirror, local-first.

    plan = estimate(repo, include="*Q4_K_M.gguf", local_dir="models/gguf")  # bytes vs free disk
    # progress bar, sha256 checked
    got = download(repo, include="*Q4_K_M.gguf", local_dir="models/gguf")
    print(got.cli)                        # the same as an `hf download` line
    download_file(repo, "config.json")    # one file
    download_model(repo)                  # a model folder for load_model

`huggingface_hub` does the transfer; `helpers.hub` says what is in the repo and what is already
here: those files are not fetched again, and no request is made. Free disk is checked before
anything is written; a file whose size or sha256 does not match is deleted, so nothing half-written
is ever left looking complete.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    AmbiguousFilesError,
    DownloadFailedError,
    NoMatchingFilesError,
    NotEnoughDiskError,
)
from .hub import (
    MODEL_FILE_PATTERNS,
    PICKLE_PATTERNS,
    PICKLE_SUFFIXES,
    Listing,
    RepoFileInfo,
    as_list,
    base_dir,
    cached_listing,
    did_you_mean,
    endpoint,
    find_incomplete,
    hub_cache_dir,
    hub_errors,
    human_size,
    local_file_record,
    pick,
    pickle_refusal,
    present,
    remote_listing,
    storage_folder,
)


def free_disk_bytes(path) -> int:
    """Free disk at `path` (or at its nearest existing parent, if it does not exist yet)."""
    path = Path(path).expanduser().resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def cli_command(
    repo_id: str,
    filename: str | None = None,
    include=None,
    exclude=None,
    local_dir=None,
    revision: str = "main",
) -> str:
    """The `hf download` command line that does what the helper call does."""
    parts = ["hf", "download", repo_id] + ([filename] if filename else [])
    for flag, patterns in (("--include", as_list(include)), ("--exclude", as_list(exclude))):
        for pattern in patterns or []:
            parts += [flag, f'"{pattern}"']
    parts += ["--revision", revision] if revision != "main" else []
    return " ".join(parts + (["--local-dir", str(local_dir)] if local_dir is not None else []))


@dataclass
class DownloadPlan:
    """What a download would fetch, and whether it fits: made by `estimate`, checked before a
    download.
    """

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

    def check(self) -> DownloadPlan:
        """Raise NotEnoughDiskError (before anything is written) if the files do not fit."""
        if not self.fits:
            raise NotEnoughDiskError(
                f"Not downloading {self.repo_id}: the {len(self.files)} chosen file(s) need "
                f"{human_size(self.need_bytes)} and only {human_size(self.free_bytes)} is free at "
                f"{self.dest}. Free some space, download to another disk (local_dir=..., or "
                "HF_HOME for the cache), or take fewer files with include=... (one GGUF "
                "quantization instead of the whole repo)."
            )
        return self

    def __repr__(self) -> str:
        return (
            f"DownloadPlan({self.repo_id}: {len(self.files)} files, "
            f"{human_size(self.total_bytes)}, {human_size(self.present_bytes)} already there, "
            f"{human_size(self.free_bytes)} free at {self.dest}, fits={self.fits})"
        )


def _plan(
    listing: Listing, chosen: list[RepoFileInfo], local_dir, free_bytes, cli: str
) -> DownloadPlan:
    base = base_dir(listing.repo_id, listing.commit, local_dir)
    dest = base if local_dir is not None else hub_cache_dir()
    already = sum(f.size for f in chosen if present(base, f))
    free = free_disk_bytes(dest) if free_bytes is None else int(free_bytes)
    return DownloadPlan(
        listing.repo_id,
        listing.revision,
        listing.commit,
        chosen,
        dest,
        sum(f.size for f in chosen),
        already,
        free,
        cli,
    )


def estimate(
    repo_id: str,
    include=None,
    exclude=None,
    local_dir=None,
    revision: str = "main",
    filename: str | None = None,
    free_bytes: int | None = None,
) -> DownloadPlan:
    """Bytes of the chosen files vs free disk at the destination (asks the hub; downloads
    nothing).
    """
    listing = remote_listing(repo_id, revision)
    return _plan(
        listing,
        _choose(listing, filename, include, exclude),
        local_dir,
        free_bytes,
        cli_command(repo_id, filename, include, exclude, local_dir, revision),
    )


def _choose(listing: Listing, filename, include, exclude) -> list[RepoFileInfo]:
    if filename is None:
        return pick(listing.files, include, exclude, listing.repo_id)
    chosen = [f for f in listing.files if f.path == filename]
    if not chosen:
        names = [f.path for f in listing.files]
        hint = did_you_mean(filename, names)
        raise NoMatchingFilesError(
            f"{listing.repo_id} has no file {filename!r}.{hint} Its files: "
            f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}. Names are "
            "case-sensitive; to pick by pattern use include='*Q4_K_M.gguf'."
        )
    return chosen


# ---- download -------------------------------------------------------------------------------


@dataclass
class DownloadResult:
    """What a download did: where the files are, how many bytes, whether they were fetched or
    already there.
    """

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
        how = (
            "already there, not fetched"
            if self.already_local
            else (f"fetched {human_size(self.fetched_bytes)} in {self.seconds:.1f} s")
        )
        return (
            f"DownloadResult({self.repo_id}: {len(self.files)} files, "
            f"{human_size(self.total_bytes)}, {how}, verified={self.verified}, path='{self.path}')"
        )


def _local_first(repo_id, revision, filename, include, exclude, local_dir):
    """(listing, chosen, base) when every chosen file is already in place, else None. No network."""
    listing = cached_listing(repo_id, revision, local_dir)
    if listing is not None:
        try:
            chosen = _choose(listing, filename, include, exclude)
        except NoMatchingFilesError:
            chosen = []
        base = base_dir(repo_id, listing.commit, local_dir)
        if chosen and all(present(base, f) for f in chosen):
            return listing, chosen, base
    if filename is not None:
        found = local_file_record(repo_id, filename, revision, local_dir)
        if found is not None:
            info = RepoFileInfo(filename, found.stat().st_size)
            # in the cache: snapshots/<commit>/<filename>, and the filename may sit in a repo folder
            base = (
                found.parents[len(Path(filename).parts) - 1]
                if local_dir is None
                else Path(local_dir).expanduser().resolve()
            )
            commit = base.name if local_dir is None else ""
            return Listing(repo_id, revision, commit, [info]), [info], base
    return None


def download(
    repo_id: str,
    include=None,
    exclude=None,
    local_dir=None,
    revision: str = "main",
    force: bool = False,
    verify: bool = True,
    free_bytes: int | None = None,
    quiet: bool = False,
    filename: str | None = None,
) -> DownloadResult:
    """Download the repo's files that match `include`/`exclude` (all by default), or one
    `filename`, local-first.

    local_dir=None keeps them in the hub cache (HF_HOME), shared by every library; a folder gets
    plain files. Free disk is checked before anything is written, sizes and sha256 after;
    `force=True` fetches again.
    """
    say = print if not quiet else (lambda text: None)
    cli, started = (
        cli_command(repo_id, filename, include, exclude, local_dir, revision),
        time.perf_counter(),
    )
    found = (
        None if force else _local_first(repo_id, revision, filename, include, exclude, local_dir)
    )
    if found is not None:
        listing, chosen, base = found
        total = sum(f.size for f in chosen)
        say(
            f"{repo_id}: {len(chosen)} file(s), {human_size(total)}, already in {base}; "
            "not fetching (force=True fetches again)."
        )
        return DownloadResult(
            repo_id=repo_id,
            commit=listing.commit,
            path=base / filename if filename else base,
            files=chosen,
            total_bytes=total,
            fetched_bytes=0,
            seconds=time.perf_counter() - started,
            already_local=True,
            verified=False,
            cli=cli,
            orphans=find_incomplete(base),
        )
    plan = estimate(repo_id, include, exclude, local_dir, revision, filename, free_bytes).check()
    say(
        f"{repo_id}: {len(plan.files)} file(s), {human_size(plan.total_bytes)} "
        f"({human_size(plan.need_bytes)} to fetch) from {endpoint()} into {plan.dest} "
        f"({human_size(plan.free_bytes)} free)"
    )
    from huggingface_hub import hf_hub_download, snapshot_download

    # For a commit hash huggingface_hub trusts a cached snapshot file as it is: remove one of the
    # wrong size.
    base = base_dir(repo_id, plan.commit, local_dir)
    for f in plan.files:
        if ((base / f.path).is_file() or (base / f.path).is_symlink()) and not present(base, f):
            _remove(base / f.path)
    # by commit hash: exactly the files listed and size-checked above, even if the branch moves
    # meanwhile
    common = dict(
        revision=plan.commit, endpoint=endpoint(), cache_dir=hub_cache_dir(), force_download=force
    )
    if local_dir is not None:
        common["local_dir"] = plan.dest
    with hub_errors(repo_id, revision, filename):
        if filename:
            hf_hub_download(repo_id, filename, **common)
        else:
            snapshot_download(repo_id, allow_patterns=[f.path for f in plan.files], **common)
    refs = storage_folder(repo_id) / "refs" / revision
    # `refs` is where huggingface_hub records a branch it resolved itself: local-first (no network)
    # reads it to find this branch's files
    if revision != plan.commit and (not refs.is_file() or refs.read_text().strip() != plan.commit):
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(plan.commit)
    _check_files(base, plan.files, verify)
    seconds = time.perf_counter() - started
    orphans = find_incomplete(base if local_dir is not None else storage_folder(repo_id))
    say(
        f"  done: {human_size(plan.need_bytes)} in {seconds:.1f} s"
        + (", sizes and checksums verified" if verify else ", sizes checked")
        + (
            f"; {len(orphans)} orphan *.incomplete file(s) from an interrupted download "
            "(hub.clean_incomplete deletes them)"
            if orphans
            else ""
        )
    )
    return DownloadResult(
        repo_id=repo_id,
        commit=plan.commit,
        path=base / filename if filename else base,
        files=plan.files,
        total_bytes=plan.total_bytes,
        fetched_bytes=plan.need_bytes,
        seconds=seconds,
        already_local=False,
        verified=verify,
        cli=cli,
        orphans=orphans,
    )


def download_file(
    repo_id: str,
    filename: str,
    local_dir=None,
    revision: str = "main",
    force: bool = False,
    verify: bool = True,
    free_bytes: int | None = None,
    quiet: bool = False,
) -> DownloadResult:
    """Download one file by its exact name (`hf_hub_download`), local-first; result.path is the
    file.
    """
    return download(
        repo_id,
        include=None,
        exclude=None,
        local_dir=local_dir,
        revision=revision,
        force=force,
        verify=verify,
        free_bytes=free_bytes,
        quiet=quiet,
        filename=filename,
    )


def sha256_file(path) -> str:
    """The hex sha256 of a file, read in pieces: what the hub lists for a large (LFS) file."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as handle:
        return sha_fileobj(handle, 8 * 2**20).hex()


def _check_files(base: Path, files: list[RepoFileInfo], verify: bool) -> None:
    """Sizes always, sha256 (or git blob id) if `verify`; a bad file is deleted, never left looking
    complete.
    """
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
        elif (
            verify
            and not f.sha256
            and f.blob_id
            and f.size < 10 * 2**20
            and git_hash(path.read_bytes()) != f.blob_id
        ):
            problem = "does not match its git blob id"
        if problem:
            _remove(path)
            raise DownloadFailedError(
                f"{f.path} {problem}; it was deleted so that nothing broken looks complete. The "
                "transfer was probably corrupted (a flaky network, proxy or mirror): run the "
                "download again; if it repeats, try another endpoint (HF_ENDPOINT) or unset it."
            )


def _remove(path: Path) -> None:
    if path.is_symlink():  # a cache snapshot entry: remove the blob it points to as well
        path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


# ---- a model, for load_model -----------------------------------------------------------------


def choose_model_files(
    files: list[RepoFileInfo],
    allow_pickle: bool = False,
    gguf_file: str | None = None,
    repo_id: str = "",
) -> list[RepoFileInfo]:
    """The files load_model needs: config + safetensors + tokenizer files, or exactly one .gguf
    file.
    """
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    names = {f.path for f in files}
    has_weights = any(f.path.endswith(".safetensors") for f in files)
    has_pickle = any(f.path.endswith(PICKLE_SUFFIXES) for f in files)
    if gguf_file is not None or (
        ggufs and not ("config.json" in names and (has_weights or has_pickle))
    ):
        chosen = pick(ggufs, include=gguf_file, repo_id=repo_id) if gguf_file else ggufs
        if not chosen:
            raise NoMatchingFilesError(f"{repo_id} has no .gguf file matching {gguf_file!r}.")
        if len(chosen) > 1:
            listed = ", ".join(f"{f.path} ({human_size(f.size)})" for f in chosen[:10])
            raise AmbiguousFilesError(
                f"{repo_id} holds {len(chosen)} GGUF files; choose one with "
                "gguf_file='*Q4_K_M.gguf' (a pattern or the exact name), or download it with "
                "hub.download_file and pass its path to load_model. "
                f"Candidates: {listed}{' ...' if len(chosen) > 10 else ''}."
            )
        return chosen
    if "config.json" not in names:
        raise NoMatchingFilesError(
            f"{repo_id} has neither config.json nor a .gguf file, so it is not a model repo "
            f"the course can load. Files: {', '.join(sorted(names)[:12])}."
        )
    if not has_weights and has_pickle and not allow_pickle:
        raise pickle_refusal(repo_id)
    chosen = pick(
        files,
        include=MODEL_FILE_PATTERNS + (PICKLE_PATTERNS if allow_pickle and not has_weights else []),
        repo_id=repo_id,
    )
    if not any(f.path.endswith((".safetensors", *PICKLE_SUFFIXES)) for f in chosen):
        raise NoMatchingFilesError(f"{repo_id} has a config.json but no weights (*.safetensors).")
    return chosen


def download_model(
    repo_id: str,
    allow_pickle: bool = False,
    gguf_file: str | None = None,
    local_dir=None,
    revision: str = "main",
    **kw,
) -> Path:
    """Fetch (or reuse) what load_model needs from a hub id: a model folder, or the chosen .gguf
    file.
    """
    listing = (
        None if kw.get("force") else cached_listing(repo_id, revision, local_dir)
    ) or remote_listing(repo_id, revision)
    chosen = choose_model_files(listing.files, allow_pickle, gguf_file, repo_id)
    result = download(
        repo_id, include=[f.path for f in chosen], local_dir=local_dir, revision=revision, **kw
    )
    return (
        result.path / chosen[0].path
        if len(chosen) == 1 and chosen[0].path.endswith(".gguf")
        else result.path
    )
