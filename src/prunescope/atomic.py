"""Files written whole or not at all, in the one JSON layout every output uses."""

from __future__ import annotations

import json
import os

def write_atomic(path: str, content: str | bytes) -> None:
    """Write text or bytes via a temporary file in the same folder and rename, so no reader sees half
    a file. (Named by hand rather than with `tempfile`, whose import alone costs more than an analysis.)"""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{os.path.basename(path)}")
    try:
        if isinstance(content, bytes):
            with open(temporary, "xb") as stream:
                stream.write(content)
        else:
            # backslashreplace: a folder name that is not valid UTF-8 must not abort the batch.
            with open(temporary, "x", encoding="utf-8", errors="backslashreplace") as stream:
                stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


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
