"""Hugging Face repo ids (`org/name[@revision]`, `hf://org/name@revision/subfolder`): the local HF cache
first, through huggingface_hub's own cache API; online, the headers are read remotely, never the weights.

huggingface_hub is imported only here, that is only when a repo id is given. The HF cache is read, never
written: no snapshot_download, no hf_hub_download.
"""

from __future__ import annotations

import os

from ..discover import examine
from . import LocateError, Location
from .remote import remote_location

NEEDED = (".json", ".safetensors")  # what a header-only analysis reads from a repo


def locate_repo(spec: str, reference: str) -> Location:
    """`spec` is `org/name[@revision][/subfolder]`; `reference` what the user wrote."""
    repo_id, revision, subfolder = _parse(spec)
    try:
        from huggingface_hub import constants
    except ImportError:
        raise LocateError(reference, "a Hugging Face repo id needs huggingface_hub",
                          'pip install "prunescope[hub]"') from None
    name = "/".join([repo_id.split("/")[1], *([subfolder] if subfolder else [])])
    snapshot, missing = _cached_snapshot(repo_id, revision, subfolder)
    if snapshot is not None:
        return Location(reference, name, snapshot)
    download = _download_command(repo_id, revision)
    if constants.HF_HUB_OFFLINE:
        raise LocateError(reference, f"{missing}, and HF_HUB_OFFLINE=1 forbids reading it from the Hub "
                                     "(nothing analysed)", f"run: {download}")
    return _remote_repo(reference, name, repo_id, revision, subfolder, missing, download)


def _parse(spec: str) -> tuple[str, str, str]:
    """("org/name", revision, subfolder) from `org/name[@revision][/subfolder]` (`refs/pr/N` kept whole)."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise LocateError(spec, "not a Hugging Face repo id", "write org/name, org/name@revision or hf://org/name")
    repo_id, revision = parts[0] + "/" + parts[1], "main"
    rest = parts[2:]
    if "@" in parts[1]:
        name, revision = parts[1].split("@", 1)
        repo_id = parts[0] + "/" + name
        if revision == "refs" and len(rest) >= 2:
            revision, rest = "/".join([revision, *rest[:2]]), rest[2:]
    return repo_id, revision, "/".join(rest)


def _download_command(repo_id: str, revision: str) -> str:
    extra = f" --revision {revision}" if revision != "main" else ""
    return f'hf download {repo_id}{extra} --include "*.json" --include "*.safetensors"'


def _cached_snapshot(repo_id: str, revision: str, subfolder: str) -> tuple[str | None, str]:
    """(the cached snapshot folder holding every file a header-only analysis needs, or None and what is
    missing). The cached tree listing, with file sizes, says what the complete snapshot holds."""
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "/".join(filter(None, [subfolder, "config.json"])), revision=revision)
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    what = "" if revision == "main" else f"revision {revision} "
    if not isinstance(config, str):
        return None, f"{what}not in {where}"
    folder = os.path.dirname(config)
    snapshot = folder[: len(folder) - len(subfolder)].rstrip(os.sep) if subfolder else folder
    listed = _cached_tree(repo_id, os.path.basename(snapshot))
    if listed is not None:
        prefix = subfolder + "/" if subfolder else ""
        wanted = [path for path in listed
                  if path.endswith(NEEDED) and path.startswith(prefix) and "/" not in path[len(prefix):]]
        absent = [path for path in wanted if _size(os.path.join(snapshot, *path.split("/"))) != listed[path]]
        if absent:
            return None, (f"{what}cached without {len(absent)} of its files, or with them incomplete "
                          f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}) in {where}")
    found = [entry for entry in examine(folder, repo_id) if entry.checkpoint is not None]
    if len(found) != 1 or not _shards_present(found[0].checkpoint.weight_files):
        return None, f"{what}cached without its weights in {where}"
    return folder, ""


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _cached_tree(repo_id: str, commit: str) -> dict[str, int] | None:
    """The repo's files at `commit` with their sizes, as huggingface_hub cached the listing when
    downloading (None if unknown: files fetched one by one, or a huggingface_hub without this API)."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:
        return None
    try:
        return {entry.path: entry.size for entry in get_cached_repo_tree(repo_id, revision=commit)}
    except Exception:  # noqa: BLE001 - CachedRepoTreeNotFoundError, or an unreadable tree file
        return None


def _shards_present(weight_files: tuple[str, ...]) -> bool:
    from ..readers import shard_paths
    from ..tensors import CheckpointError

    for path in weight_files:
        if path.endswith(".index.json"):
            try:
                if not all(os.path.isfile(shard) for shard in shard_paths(path)):
                    return False
            except CheckpointError:
                return True  # a broken index: reading it will say so
    return True


def _remote_repo(reference: str, name: str, repo_id: str, revision: str, subfolder: str, missing: str,
                 download: str) -> Location:
    """Not complete in the cache: the file list (with sizes) from the Hub; the headers are read later."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    try:
        commit = api.model_info(repo_id, revision=revision, expand=["sha"]).sha  # the commit, nothing else
        entries = list(api.list_repo_tree(repo_id, path_in_repo=subfolder or None, revision=commit))
    except GatedRepoError:
        raise LocateError(reference, "a gated repo", "accept the licence on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise LocateError(reference, f"no revision {revision!r} on the Hub",
                          "check the branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise LocateError(reference, "not on the Hub, or private",
                          "check the id; for a private repo set HF_TOKEN") from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", "?")
        raise LocateError(reference, f"{missing}, and the Hub answered HTTP {status}", f"run: {download}") from None
    except Exception as error:  # noqa: BLE001 - no network: connection errors of the HTTP client
        raise LocateError(reference, f"{missing}, and the Hub cannot be reached ({type(error).__name__})",
                          f"run: {download}") from None
    root = f"hf://{repo_id}@{commit}" + (f"/{subfolder}" if subfolder else "")
    sizes = {f"hf://{repo_id}@{commit}/{entry.path}": int(entry.size) for entry in entries
             if isinstance(entry, RepoFile)}
    return remote_location(reference, name, root, sizes,
                           {"url": root, "repo": repo_id, "revision": revision, "commit": commit})


def hub_fetcher(repo_id: str, commit: str):
    """Exact byte ranges of files of one repo commit: GET with a Range header on the resolve URL, through
    huggingface_hub's HTTP client (token, endpoint, redirects), several at once."""
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    from ..tensors import CheckpointError

    prefix = f"hf://{repo_id}@{commit}/"
    headers = build_hf_headers()

    def one(request: tuple[str, int, int]) -> bytes:
        path, start, end = request
        url = hf_hub_url(repo_id, path[len(prefix):], revision=commit)
        try:
            with http_stream_backoff("GET", url, headers={**headers, "Range": f"bytes={start}-{end - 1}"}) as response:
                if response.status_code >= 400:
                    response.read()
                    hf_raise_for_status(response)
                if response.status_code != 206 and end - start < int(response.headers.get("Content-Length") or 0):
                    # Streamed, so nothing more than the headers has come: a whole weight file never does.
                    raise CheckpointError(path, "the server ignored the byte range and would send the whole file",
                                          "download the model first, or use an endpoint that serves ranges")
                data = response.read()
        except CheckpointError:
            raise
        except GatedRepoError:
            raise CheckpointError(path, "is in a gated repo", "accept the licence on the Hub and set HF_TOKEN") from None
        except HfHubHTTPError as error:
            raise CheckpointError(path, f"cannot read: HTTP {error.response.status_code}", "check HF_TOKEN") from None
        except Exception as error:  # noqa: BLE001 - connection errors of the HTTP client
            raise CheckpointError(path, f"cannot read: {type(error).__name__}", "check the network") from None
        return data

    def fetch(ranges: list[tuple[str, int, int]]) -> list[bytes]:
        with ThreadPoolExecutor(max_workers=min(16, len(ranges))) as pool:
            return list(pool.map(one, ranges))

    return fetch
