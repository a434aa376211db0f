"""Property-based fuzzing (hypothesis) of the three parsers a hostile file reaches first: the
safetensors header parser, the torch zip reader and the unpickler (through data.pkl and the legacy
stream). Mutations of real checkpoints written by safetensors and torch.save must give a result or one
CheckpointError line naming the file; never another exception, never a hang.

Bounded for CI (a few seconds per parser). A longer run:
    PRUNESCOPE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import io
import os
import signal
import zipfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

from prunescope.readers import read_tensor_index  # noqa: E402
from prunescope.tensors import CheckpointError  # noqa: E402

EXAMPLES = int(os.environ.get("PRUNESCOPE_FUZZ_EXAMPLES", "150"))
HANG_SECONDS = 10  # any of these small files reads in milliseconds
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="PRUNESCOPE_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _state_dict() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"model.layers.0.mlp.up_proj.weight": torch.randn(4, 3, generator=generator),
            "model.norm.weight": torch.randn(3, generator=generator).half(),
            "position_ids": torch.arange(3)}


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save(_state_dict(), metadata={"format": "pt"})


def _torch_bytes(legacy: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save(_state_dict(), buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


SAFETENSORS, ZIP, LEGACY = _safetensors_bytes(), _torch_bytes(False), _torch_bytes(True)


def _data_pkl(archive: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        name = next(name for name in opened.namelist() if name.endswith("/data.pkl"))
        return name, opened.read(name)


PKL_NAME, DATA_PKL = _data_pkl(ZIP)


def mutated(data: bytes, focus: int | None = None):
    """Byte overwrites, insertions, deletions and truncation, biased towards the first `focus` bytes
    (a header, a pickle) where the parsers' decisions are made."""
    size = len(data)
    limit = min(focus or size, size) - 1
    position = st.integers(0, limit) | st.integers(0, size - 1)
    edit = st.one_of(
        st.tuples(st.just("set"), position, st.integers(0, 255)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), position, st.integers(1, 8)),
        st.tuples(st.just("cut"), st.integers(0, size), st.just(0)),
    )

    def apply(edits):
        out = bytearray(data)
        for kind, where, what in edits:
            where = min(where, len(out))
            if kind == "set" and where < len(out):
                out[where] = what
            elif kind == "insert":
                out[where:where] = what
            elif kind == "delete":
                del out[where:where + what]
            elif kind == "cut":
                del out[where:]
        return bytes(out)

    return st.lists(edit, min_size=1, max_size=6).map(apply)


def _alarm(_signum, _frame):
    raise TimeoutError("hang")


def assert_result_or_one_line(path):
    """Read in this process (the parsers' own logic; the per-file child would hide nothing here)."""
    previous = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
    if previous is not None:
        signal.alarm(HANG_SECONDS)
    try:
        read_tensor_index([str(path)])
    except CheckpointError as error:
        line = error.line()
        assert str(path) in line and "\n" not in line, line
    except TimeoutError:
        pytest.fail(f"reading {path} hung for {HANG_SECONDS}s")
    finally:
        if previous is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def no_fork(monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_NO_FORK", "1")


@FUZZ
@given(data=mutated(SAFETENSORS, focus=8 + int.from_bytes(SAFETENSORS[:8], "little")))
def test_safetensors_header_parser(tmp_path, data):
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    assert_result_or_one_line(path)


@FUZZ
@given(data=mutated(ZIP))
def test_zip_reader(tmp_path, no_fork, data):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(data)
    assert_result_or_one_line(path)


@FUZZ
@given(pickled=mutated(DATA_PKL))
def test_unpickler_in_a_valid_zip(tmp_path, no_fork, pickled):
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(io.BytesIO(ZIP)) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            out.writestr(zipfile.ZipInfo(info.filename), pickled if info.filename == PKL_NAME else source.read(info))
    assert_result_or_one_line(path)


@FUZZ
@given(data=mutated(LEGACY, focus=len(LEGACY) - sum(value.numel() * value.element_size()
                                                     for value in _state_dict().values())))
def test_unpickler_in_the_legacy_stream(tmp_path, no_fork, data):
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert_result_or_one_line(path)
