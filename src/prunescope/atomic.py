"""Files written whole or not at all, in the one JSON layout every output uses."""

from __future__ import annotations

import json
import os
import stat


def write_atomic(path: str, content: str | bytes) -> None:
    """Write text (as UTF-8) or bytes via a temporary file in the same folder and rename, so no reader
    sees half a file. (Named by hand rather than with `tempfile`, whose import alone costs more than an
    analysis.) A file that already holds exactly these bytes is left as it is: re-analysing unchanged
    models rewrites nothing, and its modification time keeps saying when its content last changed."""
    if isinstance(content, str):
        # As a text file: the platform's line ends; backslashreplace: a folder name that is not valid
        # UTF-8 must not abort the batch.
        data = (content if os.linesep == "\n" else content.replace("\n", os.linesep)).encode("utf-8", "backslashreplace")
    else:
        data = content
    if _holds(path, data):
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{os.path.basename(path)}")
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a regular file holding exactly `data`. Opened without blocking: a FIFO put
    there would otherwise wait for a writer."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
            return False
        held = b""
        while len(held) < len(data):
            chunk = os.read(descriptor, len(data) - len(held))
            if not chunk:
                return False
            held += chunk
        return held == data
    except OSError:
        return False
    finally:
        os.close(descriptor)


def write_json(path: str, data) -> None:
    write_atomic(path, dumps_readable(data))


def dumps_readable(data) -> str:
    """JSON with one top-level field per line and one list item (e.g. one layer) per line: easy to read
    and to diff, and written by json's C encoder (indent= switches to its pure-Python one, which costs
    more than the whole analysis of an 8B model's headers)."""
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder for the hundred pieces
    if not isinstance(data, dict):
        return encode(data) + "\n"
    lines = []
    for key, value in data.items():
        name = encode(key)
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            items = ",\n".join("    " + encode(item) for item in value)
            lines.append(f"  {name}: [\n{items}\n  ]")
        else:
            lines.append(f"  {name}: {encode(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
