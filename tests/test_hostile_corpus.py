"""Issue 13: name every payload, never a false alarm, never a traceback.

The corpus (tests/hostile_corpus.py) is built here, at test time, from fickling's injection API,
picklescan's sample shapes and hand-written opcode streams; each payload would create
<tmp>/sentinels/PWNED-<id>. The control test proves every payload is live under
torch.load(weights_only=False); prunescope must create none of them, name each one's callable, and
raise nothing on the benign set. Also here: non-regular files, safetensors offsets checked against the
safetensors library's own verdict, the state-dict choice in training checkpoints, lm-eval results
found by content.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import hostile_corpus as corpus
from prunescope.readers import read_tensor_index
from prunescope.tensors import CheckpointError

posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, forks and payload commands are POSIX")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    sentinels = root / "sentinels"
    sentinels.mkdir()
    malicious = corpus.build_malicious(str(root / "malicious"), str(sentinels))
    benign = corpus.build_benign(str(root / "benign"))
    return root, sentinels, malicious, benign


def told(path) -> tuple[str, object]:
    """What prunescope tells the user about a file: its findings, or the one error line."""
    try:
        index = read_tensor_index([str(path)])
    except CheckpointError as error:
        return error.line(), None
    return "\n".join(finding.line() for finding in index.findings), index


def test_corpus_has_every_source(built):
    _, _, malicious, benign = built
    origins = {sample.origin for sample in malicious}
    assert {"picklescan-style", "hand-written"} <= origins
    pytest.importorskip("fickling")
    assert "fickling" in origins and sum(sample.origin == "fickling" for sample in malicious) >= 8
    assert len(malicious) >= 40 and len(benign) >= 10


def test_no_payload_runs_and_every_one_is_named(built):
    _, sentinels, malicious, _ = built
    unnamed = {}
    for sample in malicious:
        text, _ = told(sample.path)
        assert "Traceback" not in text
        if not any(name in text for name in sample.names):
            unnamed[sample.id] = text[:300]
    assert os.listdir(sentinels) == [], "a payload ran"
    assert unnamed == {}, f"{len(unnamed)} of {len(malicious)} payloads not named: {unnamed}"


def test_benign_files_raise_no_finding(built):
    _, _, _, benign = built
    alarms = {}
    for sample in benign:
        text, index = told(sample.path)
        if text or index is None:
            alarms[sample.id] = text
    assert alarms == {}


def test_the_analysis_goes_on_past_findings(built):
    """A payload beside a state dict, a BUILD on a global, a gadget under torch: reported, and the
    tensors are still read exactly."""
    _, _, malicious, _ = built
    expected = {name: tuple(value.shape) for name, value in corpus.small_state_dict().items()}
    for sample_id in ("hw-build-on-global", "hw-dotted-torch-os-system", "ps-torch-collect-env-run",
                      "hw-proto1-legacy", "hw-proto1-zip", "hw-reconstructor-base"):
        sample = next(sample for sample in malicious if sample.id == sample_id)
        text, index = told(sample.path)
        assert index is not None, text
        assert {tensor.name: tensor.shape for tensor in index.tensors} == expected, sample_id


def test_build_on_a_global_is_named_as_such(built):
    _, _, malicious, _ = built
    sample = next(sample for sample in malicious if sample.id == "hw-build-on-global")
    text, _ = told(sample.path)
    assert "argparse.Namespace (state set on argparse.Namespace" in text, text


def test_refused_files_say_what_they_carry(built):
    """The memo pre-check refuses the file, after a static scan of its opcodes names what it calls."""
    _, _, malicious, _ = built
    sample = next(sample for sample in malicious if sample.id == "hw-memo-refused")
    text, index = told(sample.path)
    assert index is None and "memo index" in text and "system (called)" in text, text


@posix_only
def test_payloads_are_live_under_torch_load(built, tmp_path):
    """The control: torch.load(weights_only=False) runs every payload of the corpus (one process per
    file), so the tests above would see a reader that ran one."""
    root, sentinels, malicious, _ = built
    assert not os.listdir(sentinels)
    corpus.run_under_torch_load([sample.path for sample in malicious], str(tmp_path))
    deadline = time.monotonic() + 10  # Popen runs its child asynchronously
    missing = [sample.id for sample in malicious if sample.live]
    while missing and time.monotonic() < deadline:
        missing = [sample_id for sample_id in missing if not (sentinels / f"PWNED-{sample_id}").exists()]
        time.sleep(0.1)
    for name in os.listdir(sentinels):
        os.unlink(sentinels / name)  # the corpus is shared by the module's other tests
    assert missing == []


def test_benign_state_dicts_of_every_protocol_are_read_exactly(built):
    _, _, _, benign = built
    import transformers

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
                                      max_position_embeddings=64)
    shapes = {name: tuple(value.shape) for name, value in transformers.LlamaForCausalLM(config).state_dict().items()}
    for sample in benign:
        if sample.id.startswith("state-dict"):
            _, index = told(sample.path)
            assert {tensor.name: tensor.shape for tensor in index.tensors} == shapes, sample.id


def test_training_checkpoint_takes_the_dict_with_the_decoder_layers(built):
    """{"model": state_dict, "optimizer": ..., "torch_rng": tensor, "args": ...}: the RNG state at the top
    level must not make the outer dict the model."""
    import transformers

    from prunescope.pipeline import analyse_path

    _, _, _, benign = built
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=64,
                                      max_position_embeddings=64)
    expected = transformers.LlamaForCausalLM(config).num_parameters()
    for sample_id in ("training-checkpoint", "training-checkpoint-protocol-1"):
        sample = next(sample for sample in benign if sample.id == sample_id)
        analysis = analyse_path(sample.path)
        assert analysis.findings == ()
        assert len(analysis.structure.layers) == 2
        assert analysis.structure.total_params == expected


@posix_only
def test_a_killed_reading_still_names_what_the_pickle_calls(tmp_path):
    """A hash bomb after an os.system call: the child is stopped by its CPU limit, and the opcode scan
    it sent first still names the call."""
    nested = corpus.EMPTY_TUPLE + b"r" + (20).to_bytes(4, "little") + corpus.POP
    for level in range(1, 41):
        get = b"j" + (20 + level - 1).to_bytes(4, "little")
        nested += get + get + b"\x86" + b"r" + (20 + level).to_bytes(4, "little") + corpus.POP
    bomb = corpus.EMPTY_DICT + b"j" + (60).to_bytes(4, "little") + corpus.I(1) + corpus.SETITEM
    payload = corpus.call(corpus.G("os", "system"), corpus.S("true")) + corpus.POP + nested + bomb
    path = corpus.zip_with_payload(tmp_path / "bomb.pt", payload)
    done = subprocess.run([sys.executable, "-c", "import sys; from prunescope.readers import read_tensor_index as r\n"
                           "try: r([sys.argv[1]])\nexcept Exception as e: print(e)", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PRUNESCOPE_PICKLE_CPU_SECONDS": "2"})
    assert "pickle bomb" in done.stdout and "os.system (called)" in done.stdout, done.stdout + done.stderr


# -- broken files: one line each, never a blocking read -------------------------------------------------------
def inspect(path, timeout=30):
    done = subprocess.run([sys.executable, "-m", "prunescope", "inspect", str(path)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout + done.stderr


@posix_only
@pytest.mark.parametrize("make, said", [
    (lambda p: os.mkfifo(p / "pytorch_model.bin"), "is a FIFO"),
    (lambda p: os.symlink("/dev/zero", p / "pytorch_model.bin"), "is a symlink to /dev/zero, a character device"),
    (lambda p: os.symlink("/dev/zero", p / "model.safetensors"), "is a symlink to /dev/zero, a character device"),
    (lambda p: os.symlink("pytorch_model.bin", p / "pytorch_model.bin"), "is a symlink loop"),
    (lambda p: os.symlink("nowhere", p / "pytorch_model.bin"), "is a symlink to nothing"),
], ids=["fifo", "dev-zero-bin", "dev-zero-safetensors", "loop", "dangling"])
def test_non_regular_files_are_one_line(tmp_path, make, said):
    make(tmp_path)
    target = next(tmp_path.iterdir())
    for path in (target, tmp_path):  # given directly, and found in its folder
        code, output = inspect(path)
        assert code == 1 and "Traceback" not in output and len(output.strip().splitlines()) == 1, output
        assert said in output and str(target) in output, output


@posix_only
def test_a_shard_that_is_a_device_is_called_so(tmp_path):
    import builders

    model = builders.llama()
    model.save_pretrained(tmp_path / "m", max_shard_size="100KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[1]
    shard.unlink()
    os.symlink("/dev/zero", shard)
    code, output = inspect(tmp_path / "m")
    assert code == 1 and "Traceback" not in output, output
    assert f"{shard}: shard listed in model.safetensors.index.json is a symlink to /dev/zero, a character device" \
        in output, output


# -- safetensors offsets, judged by the safetensors library itself -----------------------------------------
def write_safetensors(path, header: dict, data: bytes):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def entry(begin, end, count=2):
    return {"dtype": "F32", "shape": [count], "data_offsets": [begin, end]}


@pytest.mark.parametrize("case, header, size", [
    ("in-order", {"a": entry(0, 8), "b": entry(8, 16)}, 16),
    ("json-order-reversed", {"b": entry(8, 16), "a": entry(0, 8)}, 16),
    ("empty-tensor-at-start", {"e": entry(0, 0, 0), "a": entry(0, 8)}, 8),
    ("overlap", {"a": entry(0, 8), "b": entry(4, 12)}, 12),
    ("same-bytes", {"a": entry(0, 8), "b": entry(0, 8)}, 8),
    ("gap", {"a": entry(0, 8), "b": entry(12, 20)}, 20),
    ("not-from-zero", {"a": entry(4, 12)}, 12),
    ("trailing-bytes", {"a": entry(0, 8)}, 12),
    ("end-before-begin", {"a": entry(8, 0, 0)}, 8),
])
def test_safetensors_offsets_as_the_format_rules(tmp_path, case, header, size):
    from safetensors import safe_open

    from prunescope.readers.safetensors import read_safetensors_file

    path = write_safetensors(tmp_path / f"{case}.safetensors", header, bytes(size))
    try:
        with safe_open(str(path), "np") as handle:
            library = sorted(handle.keys())
    except Exception:  # noqa: BLE001 - the library refuses the file
        library = None
    try:
        ours = sorted(tensor.name for tensor in read_safetensors_file(str(path)))
    except CheckpointError as error:
        assert str(path) in error.line()
        ours = None
    assert ours == library


# -- evaluation results by content ---------------------------------------------------------------------------
def test_lm_eval_results_are_found_by_content(tmp_path):
    from prunescope.report.evals import find_results_files

    harness = {"results": {"arc_easy": {"acc,none": 0.61, "acc_stderr,none": 0.01, "alias": "arc_easy"}},
               "versions": {"arc_easy": 1.0}, "config": {"model": "hf"}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval_results.json").write_text(json.dumps(harness))
    (tmp_path / "eval" / "lm_eval_arc_easy.json").write_text(json.dumps(harness))
    (tmp_path / "results_2024-01-01T00-00-00.json").write_text(json.dumps(harness))
    (tmp_path / "metrics.json").write_text(json.dumps({"results": {"loss": 1.5}}))  # not the harness's
    (tmp_path / "config.json").write_text(json.dumps({**harness, "model_type": "llama"}))
    found = sorted(os.path.relpath(path, tmp_path) for path in find_results_files(str(tmp_path)))
    assert found == ["eval/lm_eval_arc_easy.json", "eval_results.json", "results_2024-01-01T00-00-00.json"]
