"""prunescope's own cache (locate.cache_dir()): analyses of Hub repos kept by (repo, commit), so a remote
base is read once; and the temporary copies a --remote-scan reads.

A commit never changes, so an analysis made from it stays right for as long as prunescope's version and
the base config it was made with (where that decided something) are the same.
"""

from __future__ import annotations

import json
import os

from . import cache_dir

COPY_CHUNK = 64 * 1024 * 1024  # one range request of a --remote-scan copy
COPIES_AT_ONCE = 4


def _path(checkpoint, base_digest: str | None) -> str | None:
    origin = checkpoint.origin or {}
    if "repo" not in origin or "commit" not in origin:
        return None  # only a commit names content that cannot change
    where = origin["url"][len(f"hf://{origin['repo']}@{origin['commit']}"):].strip("/") or "_"
    return os.path.join(cache_dir(), "hub", "models--" + origin["repo"].replace("/", "--"), origin["commit"],
                        where.replace("/", "--"), f"analysis-{base_digest or 'own'}.json")


def load(checkpoint, base_config: dict | None):
    """The ModelAnalysis kept for this repo commit, or None."""
    from ..pipeline import ModelAnalysis, config_digest, fingerprint
    from ..schema import structure_from_dict
    from ..tensors import SecurityFinding

    path = _path(checkpoint, config_digest(base_config))
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data["source"]["prunescope_version"] != fingerprint(checkpoint)["prunescope_version"]:
            return None
        findings = tuple(SecurityFinding(**finding) for finding in data["security_findings"])
        return ModelAnalysis(structure_from_dict(data["structure"]), checkpoint, data["format"], data["config"],
                             findings, data["source"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, or anything unexpected: analyse again


def save(analysis) -> None:
    """Keep a Hub repo's analysis; a cache that cannot be written only costs the next run a re-read."""
    from ..atomic import write_json
    from ..schema import structure_to_dict

    path = _path(analysis.checkpoint, analysis.source.get("base_config"))
    if path is None:
        return
    data = {"structure": structure_to_dict(analysis.structure), "format": analysis.format,
            "config": analysis.config, "source": analysis.source,
            "security_findings": [{"file": f.file, "what": f.what, "detail": f.detail} for f in analysis.findings]}
    try:
        write_json(path, data)
    except OSError:
        pass


def scan_remote(structure, tensors, files, scan_local):
    """--remote-scan: copy the weight files these tensors live in to a temporary folder in prunescope's
    cache by exact ranges, scan the copies with `scan_local(tensors)`, and delete them."""
    import tempfile

    from ..tensors import CheckpointError

    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="remote-scan-", dir=cache_dir()) as folder:
        local = {}
        for number, url in enumerate(dict.fromkeys(tensor.file for tensor in tensors)):
            local[url] = os.path.join(folder, f"{number}.safetensors")
            size = files.size(url) or 0
            chunks = [(url, start, min(COPY_CHUNK, size - start)) for start in range(0, size, COPY_CHUNK)]
            with open(local[url], "wb") as handle:
                for first in range(0, len(chunks), COPIES_AT_ONCE):
                    for data in files.read_ranges(chunks[first:first + COPIES_AT_ONCE]):
                        handle.write(data)
            if os.path.getsize(local[url]) != size:
                raise CheckpointError(url, "the copy for --remote-scan came back short", "try again")
        scanned = scan_local([tensor.replace(file=local[tensor.file]) for tensor in tensors])
    return scanned
