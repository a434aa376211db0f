"""Hostile checkpoints: prunescope must read them without running, importing or choking on anything.

Every hostile file here is built at test time: with real torch.save (payload objects whose __reduce__
names os.system, subprocess.Popen, eval, ...), by patching data.pkl inside a real torch archive (the
zip rewritten with zipfile, entries stored), or from hand-written pickle opcodes. Payloads would
create a SENTINEL-* file under tmp_path; no test may ever find one after prunescope has read the
file. `test_control_payloads_are_live_under_torch_load` proves the payloads are real: torch.load runs
them (in a subprocess, touching files under tmp_path only).

Reading must give either an index (with a security finding naming the dangerous global) or a
CheckpointError whose line names the file; never another exception type, never unbounded memory or
time. The denial-of-service checks read in a subprocess with an address-space limit and a timeout.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import pytest

torch = pytest.importorskip("torch")

from hostile_corpus import (APPEND, BINPERSID, BUILD, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, MARKER,  # noqa: E402
                            NEWFALSE, NEWOBJ, POP, PROTO, REDUCE, SETITEM, SETITEMS, STOP, TUPLE2, G, I, S, call, tup)
from prunescope.readers import read_tensor_index  # noqa: E402
from prunescope.tensors import CheckpointError  # noqa: E402

SYSTEM = f"{os.system.__module__}.system"  # how os.system is pickled here: posix.system (nt.system on Windows)
TORCH_DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.float64: "F64"}
posix_only = pytest.mark.skipif(os.name != "posix", reason="payload commands and rlimits are POSIX")


# -- hand-written pickle opcodes (protocol 2, as torch.save writes): hostile_corpus's, and these -------
def PUT(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def GET(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def storage(key: str = "0", kind: str = "FloatStorage", numel: int = 4, view: bytes | None = None) -> bytes:
    fields = [S("storage"), G("torch", kind), S(key), S("cpu"), I(numel)] + ([view] if view is not None else [])
    return tup(*fields) + BINPERSID


def tensor(storage_ops: bytes, offset: bytes = I(0), size: bytes = tup(I(4)), stride: bytes = tup(I(1))) -> bytes:
    return call(G("torch._utils", "_rebuild_tensor_v2"), storage_ops, offset, size, stride, NEWFALSE,
                call(G("collections", "OrderedDict")))


def state_dict(**items: bytes) -> bytes:
    out = call(G("collections", "OrderedDict"))
    for key, value in items.items():
        out += S(key) + value + SETITEM
    return out


def laughs(depth: int, first_memo: int = 1000) -> bytes:
    """A list of 2**depth leaves in O(depth) bytes: level k is [level k-1, level k-1] via the memo."""
    out = EMPTY_LIST + PUT(first_memo) + POP
    for level in range(1, depth + 1):
        out += EMPTY_LIST + GET(first_memo + level - 1) + APPEND + GET(first_memo + level - 1) + APPEND
        out += PUT(first_memo + level) + POP
    return out + GET(first_memo + depth)


# -- payloads: each would create `sentinel` if unpickled by torch.load --------------------------------
def touch(sentinel) -> str:
    return f"touch '{sentinel}'"


def py_touch(sentinel) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


class SystemPayload:
    def __init__(self, sentinel):
        self.command = touch(sentinel)

    def __reduce__(self):
        return os.system, (self.command,)


class PopenPayload:
    def __init__(self, sentinel):
        self.argv = ["touch", str(sentinel)]

    def __reduce__(self):
        return subprocess.Popen, (self.argv,)


class EvalPayload:
    def __init__(self, sentinel):
        self.code = py_touch(sentinel)

    def __reduce__(self):
        return eval, (self.code,)


class ExecPayload:
    def __init__(self, sentinel):
        self.code = "import os\n" + py_touch(sentinel)

    def __reduce__(self):
        return exec, (self.code,)


def system_ops(sentinel, module: str = "os") -> bytes:
    return call(G(module, "system"), S(touch(sentinel)))


def getattr_import_chain_ops(sentinel) -> bytes:
    """builtins.getattr(builtins.__import__('os'), 'system')('touch SENTINEL')"""
    system = call(G("builtins", "getattr"), call(G("builtins", "__import__"), S("os")), S("system"))
    return system + tup(S(touch(sentinel))) + REDUCE


def importlib_chain_ops(sentinel) -> bytes:
    """getattr(importlib.import_module('subprocess'), 'call')(['touch', SENTINEL])"""
    function = call(G("builtins", "getattr"), call(G("importlib", "import_module"), S("subprocess")), S("call"))
    return function + tup(EMPTY_LIST + S("touch") + APPEND + S(str(sentinel)) + APPEND) + REDUCE


# -- building files -----------------------------------------------------------------------------------
def small_state_dict() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=generator),
        "model.norm.weight": torch.randn(8, generator=generator).half(),
        "position_ids": torch.arange(6, dtype=torch.int64),
    }


def save(obj, path, legacy: bool = False):
    torch.save(obj, str(path), _use_new_zipfile_serialization=not legacy)
    return path


def rewrite_zip(source, target, replace):
    """Copy a torch archive entry by entry (stored), with data.pkl transformed by `replace`."""
    with zipfile.ZipFile(source) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                data = replace(data)
            out.writestr(zipfile.ZipInfo(name), data)
    return target


def inject(pickled: bytes, payload_ops: bytes) -> bytes:
    """Swap the pickled MARKER string for opcodes that push the payload's result instead."""
    marker = S(MARKER)
    assert pickled.count(marker) == 1
    return pickled.replace(marker, payload_ops)


def zip_with_payload(tmp_path, name: str, payload_ops: bytes):
    """A real torch archive of small_state_dict() whose data.pkl also holds `payload_ops`."""
    clean = save({**small_state_dict(), "slot": MARKER}, tmp_path / f"{name}.clean.pt")
    target = rewrite_zip(clean, tmp_path / f"{name}.pt", lambda data: inject(data, payload_ops))
    clean.unlink()
    return target


def zip_from_pickle(path, pickled: bytes, storages=None):
    """A torch-like archive around a hand-written data.pkl (storage '0': 16 zero bytes by default)."""
    storages = {"0": bytes(16)} if storages is None else storages
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        out.writestr("archive/data.pkl", pickled)
        out.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            out.writestr(f"archive/data/{key}", data)
        out.writestr("archive/version", b"3\n")
    return path


def legacy_from_pickle(path, pickled: bytes, keys=("0",), storages=None):
    """The legacy stream: magic, protocol, sys info, the object, the key list, then count+bytes per key."""
    storages = {"0": (4, bytes(16))} if storages is None else storages
    with open(path, "wb") as handle:
        handle.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        handle.write(pickle.dumps(1001, protocol=2))
        handle.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        handle.write(pickled)
        handle.write(pickle.dumps(list(keys), protocol=2))
        for key in keys:
            count, data = storages[key]
            handle.write(struct.pack("<q", count) + data)
    return path


def legacy_pickle_bounds(data: bytes) -> list[int]:
    """Start offsets of the five pickles of a legacy file, plus the end of the fifth (no unpickling)."""
    stream, bounds = io.BytesIO(data), [0]
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        bounds.append(stream.tell())
    return bounds


# -- reading ---------------------------------------------------------------------------------------------
def read(path):
    return read_tensor_index([str(path)])


def security_text(path) -> str:
    """What a user is told about the file: its findings, or the CheckpointError that replaced them."""
    try:
        index = read(path)
    except CheckpointError as error:
        assert str(path) in error.line()
        return error.line()
    return "\n".join(finding.line() for finding in index.findings)


def assert_reported(index, global_name: str):
    assert any(global_name in finding.what for finding in index.findings), \
        f"no finding names {global_name}: {[finding.line() for finding in index.findings]}"
    for finding in index.findings:
        assert finding.file == str(index.files[0])


def assert_no_sentinel(root):
    found = [os.path.join(folder, name) for folder, _dirs, names in os.walk(root) for name in names
             if name.startswith("SENTINEL")]
    assert not found, f"a payload ran: {found}"


def assert_tensors_match(index, expected: dict):
    """Names, shapes, dtypes and the bytes at the reported offsets are exactly the saved tensors."""
    by_name = {info.name: info for info in index.tensors}
    assert set(by_name) == set(expected)
    for name, value in expected.items():
        info = by_name[name]
        assert info.shape == tuple(value.shape), name
        assert info.dtype == TORCH_DTYPE_CODES[value.dtype], name
        assert info.stride is None, name
        data = value.detach().contiguous().numpy().tobytes()
        with open(info.file, "rb") as handle:
            handle.seek(info.offset)
            assert handle.read(len(data)) == data, f"{name}: wrong bytes at offset {info.offset}"


# -- 1. payloads in zip archives --------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["posix", "os"])
def test_zip_data_pkl_system_reduce_is_not_run(tmp_path, module):
    sentinel = tmp_path / "SENTINEL-system"
    path = zip_with_payload(tmp_path, "hostile", system_ops(sentinel, module))
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, f"{module}.system")
    assert any(touch(sentinel) in finding.detail for finding in index.findings)  # the call is described
    assert_tensors_match(index, small_state_dict())


def test_torch_save_os_system_reduce_is_not_run(tmp_path):
    sentinel = tmp_path / "SENTINEL-torch-save"
    expected = small_state_dict()
    path = save({**expected, "evil": SystemPayload(sentinel)}, tmp_path / "hostile.pt")
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, SYSTEM)
    assert_tensors_match(index, expected)


@pytest.mark.parametrize("payload", [EvalPayload, ExecPayload], ids=["eval", "exec"])
def test_builtins_eval_exec_payloads_are_not_run(tmp_path, payload):
    sentinel = tmp_path / f"SENTINEL-{payload.__name__}"
    expected = small_state_dict()
    path = save({**expected, "evil": payload(sentinel)}, tmp_path / "hostile.pt")
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, "builtins." + ("eval" if payload is EvalPayload else "exec"))
    assert_tensors_match(index, expected)


@pytest.mark.parametrize("module", ["builtins", "__builtin__"])
@pytest.mark.parametrize("function", ["eval", "exec"])
def test_hand_written_eval_exec_in_data_pkl(tmp_path, module, function):
    sentinel = tmp_path / f"SENTINEL-{function}"
    path = zip_with_payload(tmp_path, "hostile", call(G(module, function), S(py_touch(sentinel))))
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, f"builtins.{function}")  # py2 spelling is reported under its py3 name
    assert_tensors_match(index, small_state_dict())


@pytest.mark.parametrize("chain, names", [
    (getattr_import_chain_ops, ["builtins.getattr", "builtins.__import__"]),
    (importlib_chain_ops, ["builtins.getattr", "importlib.import_module"]),
], ids=["getattr-__import__", "getattr-importlib"])
def test_getattr_import_chain_is_not_run_and_is_reported(tmp_path, chain, names):
    """The classic payload: getattr(__import__('os'), 'system')(cmd). Nothing may run, and the user must
    be told which globals the file uses -- a file that torch.load would execute must not be reported only
    as 'corrupt'."""
    sentinel = tmp_path / "SENTINEL-chain"
    path = zip_with_payload(tmp_path, "hostile", chain(sentinel))
    text = security_text(path)
    assert_no_sentinel(tmp_path)
    for name in names:
        assert name in text, f"{name} not reported; the user was told only: {text!r}"


@pytest.mark.parametrize("payload", [PopenPayload, SystemPayload], ids=["subprocess.Popen", "os.system"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_custom_reduce_next_to_real_tensors(tmp_path, payload, legacy):
    sentinel = tmp_path / "SENTINEL-reduce"
    expected = small_state_dict()
    evil = {"note": "looks harmless", "hook": payload(sentinel)}
    path = save({**expected, "extra": evil}, tmp_path / "hostile.pt", legacy=legacy)
    index = read(path)
    assert_no_sentinel(tmp_path)
    if payload is PopenPayload:  # protocol 2 spells subprocess.Popen with its py2 name, commands.Popen
        assert any(finding.what in ("subprocess.Popen", "commands.Popen") for finding in index.findings), \
            [finding.line() for finding in index.findings]
    else:
        assert_reported(index, SYSTEM)
    assert_tensors_match(index, expected)
    assert index.format == ("torch-legacy" if legacy else "torch-zip")


def test_legacy_format_payload_in_the_object(tmp_path):
    sentinel = tmp_path / "SENTINEL-legacy"
    expected = small_state_dict()
    path = save({**expected, "evil": SystemPayload(sentinel)}, tmp_path / "hostile.pt", legacy=True)
    with open(path, "rb") as handle:
        assert handle.read(1) == b"\x80"  # really the legacy stream, not a zip
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, SYSTEM)
    assert_tensors_match(index, expected)


@pytest.mark.parametrize("slot", [0, 1, 2, 4], ids=["magic", "protocol", "sys_info", "storage_keys"])
def test_legacy_payload_in_the_other_pickles_is_reported(tmp_path, slot):
    """torch.load (weights_only=False) unpickles all five pickles of a legacy file, and runs a payload in
    any of them (for 'sys_info' it then loads the file normally). prunescope must report the global,
    either as a finding or in the error -- never analyse or reject the file silently."""
    sentinel = tmp_path / "SENTINEL-slot"
    clean = save(small_state_dict(), tmp_path / "clean.pt", legacy=True).read_bytes()
    bounds = legacy_pickle_bounds(clean)
    hostile = clean[:bounds[slot]] + pickle.dumps(SystemPayload(sentinel), protocol=2) + clean[bounds[slot + 1]:]
    path = tmp_path / "hostile.pt"
    path.write_bytes(hostile)
    text = security_text(path)
    assert_no_sentinel(tmp_path)
    assert SYSTEM in text, f"the {SYSTEM} payload went unreported; the user was told only: {text!r}"


def test_bare_pickle_payload_is_reported(tmp_path):
    """pickle.dump (no torch framing) named .bin: torch.load runs it while looking for the magic number."""
    sentinel = tmp_path / "SENTINEL-bare"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"weights": SystemPayload(sentinel)}, protocol=2))
    text = security_text(path)
    assert_no_sentinel(tmp_path)
    assert SYSTEM in text, f"the {SYSTEM} payload went unreported; the user was told only: {text!r}"


def test_unlisted_module_class_call_is_reported(tmp_path):
    """zipfile.ZipFile(path, 'w') creates (or truncates) any file when torch.load unpickles it; no
    checkpoint needs it, so it must be a finding even though zipfile is not on the dangerous list."""
    sentinel = tmp_path / "SENTINEL-zipfile"
    path = zip_with_payload(tmp_path, "hostile", call(G("zipfile", "ZipFile"), S(str(sentinel)), S("w")))
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, "zipfile.ZipFile")


def test_py2_module_names_are_checked_as_torch_load_resolves_them(tmp_path):
    """torch.load maps py2 names (fix_imports): BaseHTTPServer.HTTPServer is http.server.HTTPServer, which
    binds a listening socket when called. Neither spelling is anything a checkpoint needs."""
    import _compat_pickle

    assert _compat_pickle.IMPORT_MAPPING["BaseHTTPServer"] == "http.server"
    server = call(G("BaseHTTPServer", "HTTPServer"), tup(S("127.0.0.1"), I(0)),
                  G("SimpleHTTPServer", "SimpleHTTPRequestHandler"))
    index = read(zip_with_payload(tmp_path, "hostile", server))
    assert any("HTTPServer" in finding.what for finding in index.findings), \
        [finding.line() for finding in index.findings]


# -- LLM-Pruner style whole-module pickle ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def test_llm_pruner_tokenizer_slot_payload(tmp_path, tiny_llama):
    sentinel = tmp_path / "SENTINEL-tokenizer"
    path = save({"model": tiny_llama, "tokenizer": SystemPayload(sentinel)}, tmp_path / "pytorch_model.bin")
    index = read(path)
    assert_no_sentinel(tmp_path)
    assert_reported(index, SYSTEM)
    assert index.is_whole_module and index.container == "model"
    expected = dict(tiny_llama.named_parameters())
    expected.update(tiny_llama.named_buffers())
    assert_tensors_match(index, expected)
    assert not any(module.startswith(("posix", "os")) for module in index.module_classes.values())


def test_llm_pruner_module_with_getattr_chain_in_tokenizer(tmp_path, tiny_llama):
    sentinel = tmp_path / "SENTINEL-tokenizer-chain"
    clean = save({"model": tiny_llama, "tokenizer": MARKER}, tmp_path / "clean.bin")
    path = rewrite_zip(clean, tmp_path / "pytorch_model.bin",
                       lambda data: inject(data, getattr_import_chain_ops(sentinel)))
    text = security_text(path)
    assert_no_sentinel(tmp_path)
    assert "builtins.getattr" in text and "builtins.__import__" in text, text


# -- persistent ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pid_ops, names", [
    (S("evil") + BINPERSID, ["persistent id"]),
    (tup(S("module"), G("os", "system"), S("evil.py"), S("print(1)")) + BINPERSID, ["os.system", "persistent id"]),
    (tup(S("storage"), G("posix", "system"), S("0"), S("cpu"), I(4)) + BINPERSID, ["posix.system", "persistent id"]),
    (tup(S("storage"), G("torch", "FloatStorage"), S("0"), S("cpu"), S("4")) + BINPERSID, ["persistent id"]),
], ids=["string", "module-record-in-zip", "storage-of-posix.system", "numel-not-int"])
def test_persistent_id_that_is_not_a_storage(tmp_path, pid_ops, names):
    path = zip_with_payload(tmp_path, "hostile", pid_ops)
    index = read(path)
    assert_no_sentinel(tmp_path)
    for name in names:
        assert_reported(index, name)
    assert_tensors_match(index, small_state_dict())


# -- corrupt and truncated files ---------------------------------------------------------------------
def assert_checkpoint_error(path):
    try:
        read(path)
    except CheckpointError as error:
        assert str(path) in error.line()
        return error
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(error).__name__} escaped instead of CheckpointError: {error}")
    pytest.fail(f"{path} was read without error")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_truncation_raises_checkpoint_error(tmp_path, legacy, monkeypatch):
    # Thousands of reads: in this process, without the per-file child (the reader's logic is what is tested).
    monkeypatch.setenv("PRUNESCOPE_NO_FORK", "1")
    data = save(small_state_dict(), tmp_path / "whole.pt", legacy=legacy).read_bytes()
    path = tmp_path / "truncated.pt"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        try:
            read(path)
        except CheckpointError as error:
            assert str(path) in error.line()
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"cut at {length}/{len(data)}: {type(error).__name__} escaped: {error}")
        else:
            pytest.fail(f"cut at {length}/{len(data)} bytes was read without error")


@pytest.mark.parametrize("content", [
    b"",
    b"\x00" * 100,
    random.Random(1).randbytes(4096),
    b"\x80" + random.Random(2).randbytes(4095),
    b"PK\x03\x04" + random.Random(3).randbytes(4092),
    b"\x80\x02}q\x00.",  # a bare pickle of {}: no torch framing
    b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P",  # the legacy magic number, cut inside its pickle
], ids=["empty", "zeros", "random", "pickle-opcode", "zip-magic", "bare-pickle", "cut-magic"])
def test_garbage_named_bin_raises_checkpoint_error(tmp_path, content):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    assert_checkpoint_error(path)


def test_zip_without_data_pkl_or_with_missing_storage(tmp_path):
    source = save(small_state_dict(), tmp_path / "source.pt")
    with zipfile.ZipFile(source) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    for skip in ("/data.pkl", "/data/0"):
        path = tmp_path / f"without{skip.replace('/', '_')}.pt"
        with zipfile.ZipFile(path, "w") as out:
            for name, data in entries:
                if not name.endswith(skip):
                    out.writestr(zipfile.ZipInfo(name), data)
        assert_checkpoint_error(path)


def _patch_zip_field(data: bytes, entry_suffix: str, local_offset: int, central_offset: int, value: bytes) -> bytes:
    """Overwrite one field of an entry in both its local header and its central directory record."""
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(entry_suffix))
    raw[info.header_offset + local_offset: info.header_offset + local_offset + len(value)] = value
    position = raw.find(b"PK\x01\x02")
    while position >= 0:
        name_length = struct.unpack("<H", raw[position + 28: position + 30])[0]
        if raw[position + 46: position + 46 + name_length].decode() == info.filename:
            raw[position + central_offset: position + central_offset + len(value)] = value
        position = raw.find(b"PK\x01\x02", position + 4)
    return bytes(raw)


def _flip_data_byte(data: bytes, entry_suffix: str) -> bytes:
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(entry_suffix))
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    raw[info.header_offset + 30 + name_length + extra_length] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("entry", ["/data.pkl", "/byteorder"])
@pytest.mark.parametrize("damage", ["encrypted", "compression-99", "deflate-garbage", "bad-crc"])
def test_zip_entry_tricks_raise_checkpoint_error(tmp_path, entry, damage):
    data = save(small_state_dict(), tmp_path / "source.pt").read_bytes()
    if damage == "encrypted":  # general purpose flag bit 0
        data = _patch_zip_field(data, entry, 6, 8, struct.pack("<H", 1))
    elif damage == "compression-99":
        data = _patch_zip_field(data, entry, 8, 10, struct.pack("<H", 99))
    elif damage == "deflate-garbage":  # stored bytes declared as deflate
        data = _patch_zip_field(data, entry, 8, 10, struct.pack("<H", 8))
    else:
        data = _flip_data_byte(data, entry)
    path = tmp_path / "damaged.pt"
    path.write_bytes(data)
    assert_checkpoint_error(path)


def test_zip_with_undecodable_utf8_name_raises_checkpoint_error(tmp_path):
    data = save(small_state_dict(), tmp_path / "source.pt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(info.filename for info in archive.infolist() if info.filename.endswith("/version"))
    bad = name.encode()[:-2] + b"\xff\xfe"
    data = _patch_zip_field(data, "/version", 6, 8, struct.pack("<H", 0x800)).replace(name.encode(), bad)
    path = tmp_path / "damaged.pt"
    path.write_bytes(data)
    assert_checkpoint_error(path)


def test_duplicate_data_pkl_cannot_hide_a_payload(tmp_path):
    """Two data.pkl entries: torch (miniz) picks one by binary search, Python's zipfile the last. A benign
    duplicate must not hide the hostile one torch.load would run: report it or refuse the file."""
    sentinel = tmp_path / "SENTINEL-duplicate"
    benign = save(small_state_dict(), tmp_path / "benign.pt")
    with zipfile.ZipFile(benign) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    prefix = entries[0][0].split("/")[0]
    hostile_pkl = PROTO + EMPTY_DICT + S("x") + system_ops(sentinel) + SETITEM + STOP
    chosen = None
    for fillers in range(12):  # find a layout in which torch.load picks the hostile entry
        path = tmp_path / f"duplicate{fillers}.pt"
        with zipfile.ZipFile(path, "w") as out, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            out.writestr(zipfile.ZipInfo(f"{prefix}/version"), b"3\n")
            for number in range(fillers):
                out.writestr(zipfile.ZipInfo(f"{prefix}/filler{number:02d}"), b"x")
            out.writestr(zipfile.ZipInfo(f"{prefix}/data.pkl"), hostile_pkl)
            for name, data in entries:
                if not name.endswith("/version"):
                    out.writestr(zipfile.ZipInfo(name), data)
        try:
            torch.load(str(path), weights_only=True)  # refuses any global it does not know: runs nothing
        except Exception as error:  # noqa: BLE001
            if "system" in str(error):
                chosen = path
                break
    if chosen is None:
        pytest.skip("torch picks the benign data.pkl in every layout tried")
    text = security_text(chosen)
    assert_no_sentinel(tmp_path)
    assert "duplicate" in text.lower() or "os.system" in text, \
        f"torch.load would run the hidden os.system payload; the user was told only: {text!r}"


# -- crafted tensor metadata -------------------------------------------------------------------------------
MALFORMED = {
    "size-not-ints": tensor(storage(), size=tup(S("a"))),
    "size-negative": tensor(storage(), size=tup(I(-5))),
    "size-float": tensor(storage(), size=tup(b"G" + struct.pack(">d", 1.5))),
    "offset-negative": tensor(storage(), offset=I(-1000)),
    "view-offset-not-int": tensor(storage(view=tup(S("0"), S("x"), I(4)))),
    "view-too-short": tensor(storage(view=tup(S("0")))),
    "tensor-state-rebuilt": tensor(storage()) + EMPTY_DICT + S("storage") + I(5) + SETITEM + BUILD,
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_crafted_tensor_metadata_raises_checkpoint_error(tmp_path, case, legacy):
    pickled = PROTO + state_dict(weight=MALFORMED[case]) + STOP
    path = tmp_path / "crafted.pt"
    if legacy:
        legacy_from_pickle(path, pickled)
    else:
        zip_from_pickle(path, pickled)
    assert_checkpoint_error(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_set_on_a_storage_type_is_a_finding_and_changes_nothing(tmp_path, legacy):
    """BUILD on the global torch.FloatStorage: torch.load would set attributes on the class. Reported
    as such; the storage type keeps its dtype and the tensor is read as saved."""
    storage_type = G("torch", "FloatStorage") + EMPTY_DICT + S("dtype") + EMPTY_LIST + SETITEM + BUILD
    weight = tensor(tup(S("storage"), storage_type, S("0"), S("cpu"), I(4)) + BINPERSID)
    pickled = PROTO + state_dict(weight=weight) + STOP
    path = tmp_path / "crafted.pt"
    legacy_from_pickle(path, pickled) if legacy else zip_from_pickle(path, pickled)
    index = read(path)
    assert [(finding.what, finding.detail.split(":")[0]) for finding in index.findings] == \
        [("torch.FloatStorage", "state set on torch.FloatStorage")]
    assert [(tensor.name, tensor.dtype, tensor.shape) for tensor in index.tensors] == [("weight", "F32", (4,))]


def test_deeply_nested_modules_raise_no_recursion_error(tmp_path):
    depth = 5000
    module_open = GET(0) + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + S("_parameters") + EMPTY_DICT + SETITEM + S("_modules") \
        + EMPTY_DICT
    pickled = (PROTO + G("mylib", "Block") + PUT(0) + POP + (module_open + S("child")) * depth + module_open
               + SETITEM + BUILD + (SETITEM + SETITEM + BUILD) * depth + STOP)
    path = zip_from_pickle(tmp_path / "deep.pt", pickled)
    try:
        read(path)
    except CheckpointError as error:
        assert str(path) in error.line()
    except RecursionError as error:
        pytest.fail(f"RecursionError escaped: {error}")


# -- bounded memory and time ------------------------------------------------------------------------------
ISOLATED = textwrap.dedent("""
    import json, resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from prunescope.readers import read_tensor_index
    from prunescope.tensors import CheckpointError
    try:
        index = read_tensor_index([sys.argv[1]])
        out = {"status": "ok", "tensors": [[t.name, list(t.shape), t.dtype] for t in index.tensors],
               "findings": [f.what for f in index.findings]}
    except CheckpointError as error:
        out = {"status": "checkpoint_error", "message": error.line()}
    except BaseException as error:
        out = {"status": "escaped", "type": type(error).__name__, "message": str(error)[:300]}
    print(json.dumps(out))
""")
MEMORY_LIMIT = 1 << 30  # the reader's address space: far more than any of these tiny files needs
TIME_LIMIT = 6  # a correct reader needs well under a second for any of these files


def read_isolated(path, cpu_seconds: int | None = None) -> dict:
    env = dict(os.environ)
    if cpu_seconds is not None:  # the reader's own limit on the CPU a pickle may take
        env["PRUNESCOPE_PICKLE_CPU_SECONDS"] = str(cpu_seconds)
    try:
        done = subprocess.run([sys.executable, "-c", ISOLATED, str(path), str(MEMORY_LIMIT)],
                              capture_output=True, text=True, timeout=TIME_LIMIT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {os.path.basename(path)} ({os.path.getsize(path)} bytes) took over {TIME_LIMIT}s")
    lines = done.stdout.strip().splitlines()
    assert lines, f"the reader died (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1])


def assert_bounded(result: dict, path):
    assert result["status"] != "escaped", f"{result['type']} escaped: {result['message']}"
    if result["status"] == "checkpoint_error":
        assert str(path) in result["message"]
        assert "MemoryError" not in result["message"], \
            f"a {os.path.getsize(path)}-byte file needed more than {MEMORY_LIMIT >> 20} MiB: {result['message']}"


@posix_only
def test_isolated_reader_handles_a_normal_file(tmp_path):
    path = zip_from_pickle(tmp_path / "fine.pt", PROTO + state_dict(weight=tensor(storage())) + STOP)
    assert read_isolated(path) == {"status": "ok", "tensors": [["weight", [4], "F32"]], "findings": []}


SHARED = {  # each pushes one object whose repr/str has 2**40 leaves
    "call-arguments": call(G("somelib", "helper"), laughs(40)),
    "persistent-id": laughs(40) + BINPERSID,
    "reconstructor": call(G("copyreg", "_reconstructor"), laughs(40), G("builtins", "object"), b"N"),
    "storage-key": tup(S("storage"), G("torch", "FloatStorage"), laughs(40), S("cpu"), I(4)) + BINPERSID,
    "builtins.str": call(G("builtins", "str"), laughs(40)),
}


@posix_only
@pytest.mark.parametrize("case", sorted(SHARED))
def test_shared_structure_is_not_expanded(tmp_path, case):
    """A few hundred bytes of memo references describe a list of 2**40 leaves; describing it in a finding
    (repr) or a storage key (str) must not try to write it out."""
    path = zip_from_pickle(tmp_path / "laughs.pt", PROTO + state_dict(weight=tensor(storage()), x=SHARED[case]) + STOP)
    assert_bounded(read_isolated(path), path)


@posix_only
def test_embedded_config_with_shared_dicts_is_not_expanded(tmp_path):
    """A pickled module's `config` whose dicts reference one child 16 times, 9 levels deep (16**9 paths)."""
    fan, levels, memo = 16, 9, 100
    config = EMPTY_DICT + PUT(memo) + POP
    for level in range(1, levels + 1):
        items = b"".join(S(f"k{number}") + GET(memo + level - 1) for number in range(fan))
        config += EMPTY_DICT + MARK + items + SETITEMS + PUT(memo + level) + POP
    module = (G("mylib", "Model") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT
              + S("_parameters") + state_dict(weight=tensor(storage())) + SETITEM
              + S("_modules") + EMPTY_DICT + SETITEM
              + S("config") + config + GET(memo + levels) + SETITEM + BUILD)
    path = zip_from_pickle(tmp_path / "config.pt", PROTO + module + STOP)
    assert_bounded(read_isolated(path), path)


@posix_only
@pytest.mark.parametrize("ops", [
    call(G("builtins", "bytearray"), I(1 << 34)),
    call(G("builtins", "bytes"), I(1 << 34)),
    call(G("builtins", "list"), call(G("builtins", "range"), I(1 << 34))),
    call(G("builtins", "set"), call(G("builtins", "range"), I(1 << 34))),
], ids=["bytearray(n)", "bytes(n)", "list(range(n))", "set(range(n))"])
def test_allowed_builtins_cannot_amplify_memory(tmp_path, ops):
    """set, list, bytes, bytearray and range are let through as real callables; a 40-byte call must not
    make the reader allocate 16 GiB."""
    path = zip_from_pickle(tmp_path / "amplify.pt", PROTO + state_dict(weight=tensor(storage()), x=ops) + STOP)
    assert_bounded(read_isolated(path), path)


@posix_only
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_huge_memo_index_does_not_allocate(tmp_path, legacy):
    """LONG_BINPUT 2**31-1: CPython's C unpickler grows its memo array to the index (16 GiB)."""
    pickled = PROTO + state_dict(weight=tensor(storage())) + PUT(0x7FFFFFFF) + STOP
    path = tmp_path / "memo.pt"
    legacy_from_pickle(path, pickled) if legacy else zip_from_pickle(path, pickled)
    assert_bounded(read_isolated(path), path)


@posix_only
def test_tuple_hash_bomb_is_bounded(tmp_path):
    """A dict key (t39, t39) where t_k = (t_k-1, t_k-1): hashing it visits 2**40 tuples."""
    # Memo slots from 20 on: in range of the opcodes before them, as a real pickler numbers them.
    nested = EMPTY_TUPLE + PUT(20) + POP
    for level in range(1, 41):
        nested += GET(20 + level - 1) + GET(20 + level - 1) + TUPLE2 + PUT(20 + level) + POP
    bomb = EMPTY_DICT + GET(60) + I(1) + SETITEM
    path = zip_from_pickle(tmp_path / "hash.pt", PROTO + state_dict(weight=tensor(storage()), x=nested + bomb) + STOP)
    # No reader can bound this up front; prunescope reads pickles in a child process with a CPU limit
    # (60 s by default, 2 s here) and reports a child that exceeds it.
    result = read_isolated(path, cpu_seconds=2)
    assert_bounded(result, path)
    assert result["status"] == "checkpoint_error" and "pickle bomb" in result["message"]


@posix_only
def test_zero_stride_view_is_not_enumerated(tmp_path):
    """An expanded view (stride 0, as torch saves `expand()`ed tensors) of 10**10 elements over a 16-byte
    storage is a valid description; measuring its contents must not list every element's position."""
    import resource

    huge = tensor(storage(), size=tup(I(100000), I(100000)), stride=tup(I(0), I(0)))
    small = tensor(storage(), size=tup(I(2), I(2)), stride=tup(I(2), I(1)))
    pickled = PROTO + state_dict(**{"model.embed_tokens.weight": small,
                                    "model.layers.0.self_attn.q_proj.weight": huge}) + STOP
    path = zip_from_pickle(tmp_path / "expanded.pt", pickled)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    try:
        done = subprocess.run([sys.executable, "-m", "prunescope", "inspect", str(path)], capture_output=True,
                              text=True, timeout=TIME_LIMIT, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"inspect took over {TIME_LIMIT}s on a {os.path.getsize(path)}-byte file")
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "MemoryError" not in output, output[-3000:]


FUZZ = textwrap.dedent("""
    import json, random, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
    from prunescope.readers import read_tensor_index
    from prunescope.tensors import CheckpointError
    source, target, rounds = sys.argv[1], sys.argv[2], int(sys.argv[4])
    data = open(source, "rb").read()
    rng = random.Random(1234)
    escaped = []
    for number in range(rounds):
        mutated = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with open(target, "wb") as handle:
            handle.write(mutated)
        try:
            read_tensor_index([target])
        except CheckpointError as error:
            assert target in error.line()
        except BaseException as error:
            escaped.append(f"{type(error).__name__}: {str(error)[:100]}")
    print(json.dumps(escaped))
""")


@posix_only
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_random_byte_damage_raises_only_checkpoint_error(tmp_path, legacy):
    source = save(small_state_dict(), tmp_path / "source.pt", legacy=legacy)
    done = subprocess.run([sys.executable, "-c", FUZZ, str(source), str(tmp_path / "damaged.pt"), str(MEMORY_LIMIT),
                           "1500"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PRUNESCOPE_NO_FORK": "1"})  # the reader's logic, 1500 times
    assert done.returncode == 0, done.stderr[-2000:]
    escaped = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = sorted({line.split(":")[0] for line in escaped})
    assert not escaped, f"{len(escaped)} of 1500 damaged files raised {kinds}, e.g. {escaped[:5]}"


# -- the batch CLI, end to end -------------------------------------------------------------------------------
def run_cli(tmp_path, models):
    return subprocess.run([sys.executable, "-m", "prunescope", "analyze", "--models_dir", str(models),
                           "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_cli_batch_with_hostile_good_and_corrupt_models(tmp_path, tiny_llama):
    models = tmp_path / "models"
    models.mkdir()
    sentinel = tmp_path / "SENTINEL-cli"
    good_state = tiny_llama.state_dict()
    save(good_state, models / "good.pt")
    save({**good_state, "lm_head.extra": SystemPayload(sentinel)}, models / "hostile.pt")
    (models / "corrupt.bin").write_bytes(random.Random(7).randbytes(2048))

    done = run_cli(tmp_path, models)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    assert_no_sentinel(tmp_path)

    lines = output.splitlines()
    corrupt_lines = [line for line in lines if "corrupt.bin" in line and "✗" in line]
    assert corrupt_lines, output
    security = [line for line in lines if "SECURITY" in line]
    assert any(SYSTEM in line and "hostile.pt" in line for line in security), output
    assert not any("good.pt" in line for line in security), output

    with open(tmp_path / "out" / "batch_analysis_results.json", encoding="utf-8") as handle:
        batch = {record["name"]: record for record in json.load(handle)["models"]}
    assert batch["corrupt"]["status"] == "error" and "corrupt.bin" in batch["corrupt"]["error"]
    assert batch["good"]["status"] == "analysed" and batch["hostile"]["status"] == "analysed"
    parameters = sum(value.numel() for value in tiny_llama.parameters())
    for name in ("good", "hostile"):
        assert batch[name]["num_layers"] == 2
        assert batch[name]["total_params"] == parameters
    assert batch["good"]["security_findings"] == []
    assert any(SYSTEM in line for line in batch["hostile"]["security_findings"])

    with open(os.path.join(batch["hostile"]["analysis_dir"], "model_structure.json"), encoding="utf-8") as handle:
        structure = json.load(handle)
    assert any(finding["what"] == SYSTEM and finding["file"].endswith("hostile.pt")
               for finding in structure["security_findings"])
    with open(os.path.join(batch["good"]["analysis_dir"], "model_structure.json"), encoding="utf-8") as handle:
        assert json.load(handle)["security_findings"] == []

    leftovers = [os.path.join(folder, name) for folder, _dirs, names in os.walk(tmp_path) for name in names + _dirs
                 if name.startswith(".tmp-")]
    assert not leftovers, leftovers


def test_cli_batch_continues_after_a_file_that_crashes_the_reader(tmp_path, tiny_llama):
    """A crafted tensor description (size ('a',)) must be one error line, not the end of the batch."""
    models = tmp_path / "models"
    models.mkdir()
    zip_from_pickle(models / "a_crafted.pt", PROTO + state_dict(weight=MALFORMED["size-not-ints"]) + STOP)
    save(tiny_llama.state_dict(), models / "b_good.pt")
    done = run_cli(tmp_path, models)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 1, output
    assert any("a_crafted" in line and "✗" in line for line in output.splitlines()), output
    with open(tmp_path / "out" / "batch_analysis_results.json", encoding="utf-8") as handle:
        batch = {record["name"]: record for record in json.load(handle)["models"]}
    assert batch["b_good"]["status"] == "analysed"
    assert batch["a_crafted"]["status"] == "error"


# -- control: the payloads are real ------------------------------------------------------------------------
CONTROL = textwrap.dedent("""
    import sys, time, warnings
    import torch
    warnings.simplefilter("ignore")
    for path in sys.argv[1:]:
        try:
            torch.load(path, weights_only=False)
        except Exception:
            pass  # the payload has run by then, or never will
""")


@posix_only
def test_control_payloads_are_live_under_torch_load(tmp_path):
    """The same files, given to torch.load(weights_only=False) in a subprocess, do create their sentinels
    (under tmp_path): the tests above would catch a reader that ran them."""
    builders = {
        "zip-system": lambda s: zip_with_payload(tmp_path, "zip-system", system_ops(s)),
        "zip-eval": lambda s: zip_with_payload(tmp_path, "zip-eval", call(G("builtins", "eval"), S(py_touch(s)))),
        "zip-chain": lambda s: zip_with_payload(tmp_path, "zip-chain", getattr_import_chain_ops(s)),
        "torch-popen": lambda s: save({**small_state_dict(), "x": PopenPayload(s)}, tmp_path / "popen.pt"),
        "torch-exec": lambda s: save({**small_state_dict(), "x": ExecPayload(s)}, tmp_path / "exec.pt"),
        "legacy": lambda s: save({**small_state_dict(), "x": SystemPayload(s)}, tmp_path / "legacy.pt", legacy=True),
    }
    (tmp_path / "live").mkdir()
    files, sentinels = [], []
    for name, build in builders.items():
        sentinel = tmp_path / "live" / f"SENTINEL-{name}"
        files.append(str(build(sentinel)))
        sentinels.append(sentinel)
    clean = save(small_state_dict(), tmp_path / "clean-legacy.pt", legacy=True).read_bytes()
    bounds = legacy_pickle_bounds(clean)
    sys_info_sentinel = tmp_path / "live" / "SENTINEL-legacy-sys-info"
    sys_info = tmp_path / "sys-info.pt"
    sys_info.write_bytes(clean[:bounds[2]] + pickle.dumps(SystemPayload(sys_info_sentinel), protocol=2)
                         + clean[bounds[3]:])
    files.append(str(sys_info))
    sentinels.append(sys_info_sentinel)

    for path in files:  # prunescope first: nothing may exist yet
        try:
            read(path)
        except CheckpointError:
            pass
    assert not list((tmp_path / "live").iterdir())

    subprocess.run([sys.executable, "-c", CONTROL, *files], capture_output=True, timeout=120, cwd=tmp_path)
    deadline = time.monotonic() + 10  # Popen runs its child asynchronously
    while time.monotonic() < deadline and not all(sentinel.exists() for sentinel in sentinels):
        time.sleep(0.1)
    assert [sentinel.name for sentinel in sentinels if not sentinel.exists()] == []
