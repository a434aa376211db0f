"""Stage 1, for models given by reference (--base_model, --model, inspect): where does the model live?

A reference is a local path (an existing path always wins), a Hugging Face repo id `org/name[@revision]`
(the local HF cache first, through huggingface_hub's own cache API: hub.py), or a URL (`hf://`, `s3://`,
`gs://`, `https://`: remote.py). Nothing heavy is imported unless a reference needs it.

Folders inside a Hugging Face cache belong to huggingface_hub: prunescope reads them and never writes
there (`in_hf_cache`); an analysis of such a model goes under --output_dir.
"""

from __future__ import annotations

import os
import re

from ..records import Record
from ..tensors import CheckpointError

# `org/name` or `org/name@revision` (a branch, tag or commit); Hub names use letters, digits, - _ .
# Patterns, not compiled objects: compiling at import would cost every run, re caches them on first use.
REPO_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?"
URL = r"[a-z][a-z0-9+.-]*://"


class LocateError(CheckpointError):
    """A reference that leads to no readable model: the run stops before analysing anything."""


class Location(Record):
    reference: str  # as the user gave it
    name: str  # the model's name in outputs
    path: str  # a local folder or file; for a remote model, the URL of its folder or file
    checkpoint: object = None  # a remote model's discover.Checkpoint (local ones are discovered from `path`)
    remote_bytes: int = 0  # what reading all of a remote model's weight files would transfer

    @property
    def is_remote(self) -> bool:
        return self.checkpoint is not None


def names_remote_model(reference: str) -> bool:
    """A reference that is not a local path: a URL, or a repo id that is not an existing path. `models/x`
    where a folder `models` exists is taken for a mistyped path (`hf://models/x` forces the Hub)."""
    if os.path.lexists(reference):
        return False
    if re.match(URL, reference):
        return True
    return bool(re.fullmatch(REPO_ID, reference)) and ("@" in reference or not os.path.isdir(reference.split("/")[0]))


def locate(reference: str) -> Location:
    """Where the model named by `reference` is. Raises LocateError with one line saying what to do."""
    if not names_remote_model(reference):
        return Location(reference, os.path.basename(os.path.normpath(reference)), reference)
    if reference.startswith("hf://"):
        from .hub import locate_repo

        return locate_repo(reference[len("hf://"):], reference)
    if re.match(URL, reference):
        from .remote import locate_url

        return locate_url(reference)
    from .hub import locate_repo

    return locate_repo(reference, reference)


def snapshot_origin(real: str) -> dict | None:
    """{"repo", "commit"} when `real`, a path with its symlinks resolved (os.path.realpath), lies in a
    snapshot of a Hugging Face cache: `.../models--org--name/snapshots/<commit>/...` beside that repo's
    `blobs/` or `refs/`."""
    parts = real.split(os.sep)
    for position in range(len(parts) - 2, 0, -1):
        if parts[position] == "snapshots" and parts[position - 1].startswith("models--"):
            repo_folder = os.sep.join(parts[:position])
            if os.path.isdir(os.path.join(repo_folder, "blobs")) or os.path.isdir(os.path.join(repo_folder, "refs")):
                return {"repo": "/".join(parts[position - 1].split("--")[1:]), "commit": parts[position + 1]}
    return None


def in_hf_cache(path: str) -> bool:
    """Whether `path` (symlinks resolved) is inside a Hugging Face cache: a snapshot folder, or anywhere
    under HF_HUB_CACHE or HF_HOME."""
    real = os.path.realpath(path)  # once: it walks every component of the path
    if snapshot_origin(real) is not None:
        return True
    roots = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME")]
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
               for root in (os.path.realpath(os.path.expanduser(r)) for r in roots if r))


def cache_dir() -> str:
    """prunescope's own cache folder: $PRUNESCOPE_CACHE, else $XDG_CACHE_HOME/prunescope (~/.cache/prunescope)."""
    explicit = os.environ.get("PRUNESCOPE_CACHE")
    if explicit:
        return explicit
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "prunescope")


def refuse_implicit_scan(locations) -> str | None:
    """--sparsity reads every byte of the weights: for a remote model, one line saying how many bytes that
    would be, unless --remote-scan asked for it (None when every model is local)."""
    remote = [location for location in locations if location is not None and location.is_remote]
    if not remote:
        return None
    first = remote[0]
    total = sum(location.remote_bytes for location in remote)
    others = f" (and {len(remote) - 1} more remote model(s))" if len(remote) > 1 else ""
    return (f"{first.reference}: --sparsity would read {total / 1e9:.2f} GB ({total} bytes) of remote weight "
            f"files{others} (add --remote-scan to read them, or download the model first)")
