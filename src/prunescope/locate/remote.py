"""Models on remote storage, read by exact byte ranges: one listing gives every file's size, then the
readers ask for the ranges they need in batches that go out concurrently.

Never `open()` a remote file: fsspec's buffered files read ahead (s3fs's default fetches 50 MiB for an
8.5 KB header, HfFileSystem adds a 5 MiB block to every read). fsspec URLs go through `cat_ranges`;
Hub repos through huggingface_hub's own HTTP client with a Range header (hub.py).
"""

from __future__ import annotations

from ..discover import TORCH_SUFFIXES, Checkpoint, _not_a_model
from ..tensors import CheckpointError
from . import LocateError, Location

# The package that reads each URL scheme, and the prunescope extra that installs it.
BACKENDS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
            "http": ("aiohttp", "http"), "https": ("aiohttp", "http")}


class RemoteFiles:
    """The file-access interface of readers/access.py for remote files, whose sizes are known from
    the listing. `fetch` takes [(path, start, end)] and returns their bytes, fetched concurrently."""

    remote = True

    def __init__(self, sizes: dict[str, int], fetch):
        self.sizes = sizes
        self._fetch = fetch
        self._whole: dict[str, bytes] = {}

    def size(self, path: str) -> int | None:
        return self.sizes.get(path)

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        wanted = [(path, offset, min(offset + size, self.sizes.get(path, 0))) for path, offset, size in ranges]
        asked = [request for request in wanted if request[2] > request[1]]
        fetched = iter(self._fetch(asked) if asked else [])
        return [next(fetched) if end > start else b"" for _, start, end in wanted]

    def preload(self, paths) -> None:
        """Whole small files (config, shard index) in one batch, kept for `read_whole`."""
        paths = [path for path in dict.fromkeys(paths) if path not in self._whole and path in self.sizes]
        self._whole.update(zip(paths, self.read_ranges([(path, 0, self.sizes[path]) for path in paths])))

    def read_whole(self, path: str) -> bytes:
        if path not in self.sizes:
            raise CheckpointError(path, "not found on the remote storage", "check the URL")
        self.preload([path])
        return self._whole[path]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_remote(origin: dict) -> RemoteFiles:
    """File access for a remote checkpoint, from the origin its location recorded (no request made)."""
    if "repo" in origin:
        from .hub import hub_fetcher

        return RemoteFiles(origin["files"], hub_fetcher(origin["repo"], origin["commit"]))
    return RemoteFiles(origin["files"], _fsspec_fetcher(_filesystem(origin["url"])))


def locate_url(url: str) -> Location:
    """A model folder, or a single .safetensors file, at an fsspec URL (s3://, gs://, https://)."""
    url = url.rstrip("/")
    fs = _filesystem(url)
    try:
        if url.endswith((".safetensors",) + TORCH_SUFFIXES):
            sizes = {url: int(fs.info(url)["size"])}
        else:
            sizes = {fs.unstrip_protocol(entry["name"]): int(entry["size"])
                     for entry in fs.ls(url, detail=True) if entry.get("type") == "file"}
    except FileNotFoundError:
        raise LocateError(url, "not found", "check the URL") from None
    except PermissionError:
        raise LocateError(url, "access denied", "check the storage credentials") from None
    except Exception as error:  # noqa: BLE001 - every backend has its own errors; one line for all
        raise LocateError(url, f"cannot list: {type(error).__name__}: {str(error)[:200]}",
                          "check the URL, the network and the credentials") from None
    return remote_location(url, url.rsplit("/", 1)[-1], url, sizes, {"url": url})


def remote_location(reference: str, name: str, root: str, sizes: dict[str, int], origin: dict) -> Location:
    """The checkpoint a remote folder (or file) holds, judged from its file names as discover.py would."""
    by_name = {path.rsplit("/", 1)[-1]: path for path in sizes}
    config = by_name.get("config.json")
    if root in sizes:  # a single file
        weights = (root,) if root.endswith(".safetensors") else ()
    elif "model.safetensors.index.json" in by_name:
        weights = (by_name["model.safetensors.index.json"],)
    else:
        weights = tuple(sorted(path for name, path in by_name.items()
                               if name.endswith(".safetensors") and not _not_a_model(name)))
    if not weights:
        pickles = [name for name in by_name if name.endswith(TORCH_SUFFIXES) and not _not_a_model(name)]
        if pickles:
            raise LocateError(reference, f"holds only torch pickles ({pickles[0]}): their structure is spread "
                                         "through the whole file", "download it first and give the local copy")
        raise LocateError(reference, "no .safetensors weights there",
                          "give the folder that holds config.json and the .safetensors files")
    checkpoint = Checkpoint("huggingface" if config else "safetensors", root, weights, config,
                            origin={**origin, "files": sizes})
    weight_bytes = sum(size for path, size in sizes.items() if path.endswith(".safetensors"))
    return Location(reference, name, root, checkpoint, weight_bytes)


def _filesystem(url: str):
    protocol = url.split("://", 1)[0]
    package, extra = BACKENDS.get(protocol, (protocol, None))
    try:
        import logging

        import fsspec

        # Backends log retries and failures with whole tracebacks; prunescope says what failed in one line.
        for name in (package, "fsspec"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return fsspec.filesystem(protocol)
    except ImportError:
        hint = f'pip install "prunescope[{extra}]"' if extra else f"pip install fsspec {package}"
        raise LocateError(url, f"reading {protocol}:// needs {package}", hint) from None
    except ValueError:
        raise LocateError(url, f"unknown storage {protocol}://",
                          "give a local path, a Hub repo id, or an hf://, s3://, gs:// or https:// URL") from None


def _fsspec_fetcher(fs):
    def fetch(ranges: list[tuple[str, int, int]]) -> list[bytes]:
        try:
            return fs.cat_ranges([path for path, _, _ in ranges], [start for _, start, _ in ranges],
                                 [end for _, _, end in ranges], on_error="raise")
        except Exception as error:  # noqa: BLE001 - every backend has its own errors
            raise CheckpointError(ranges[0][0], f"cannot read: {type(error).__name__}: {str(error)[:200]}",
                                  "check the network and the credentials") from None

    return fetch
