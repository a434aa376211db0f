"""Quantized and compressed checkpoints, written by the quantization libraries' own code, are counted
as the dense model they encode: every count equals the dense pruned model's module counts, and with
--sparsity every stored nonzero equals the library's own dequantization's `(w != 0).sum()`."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from oracle import assert_matches
from prunescope.pipeline import ScanOptions, analyse_path
from prunescope.schema import structure_from_dict, structure_to_dict
from prunescope.tensors import CheckpointError
from quantized_builders import pruned_llama, save_bitsandbytes, save_compressed_tensors, save_packed

pytest.importorskip("compressed_tensors")


def analysed(path, sparsity=False) -> dict:
    structure = analyse_path(str(path), scan=ScanOptions(workers=2) if sparsity else None).structure
    data = structure_to_dict(structure)
    assert structure_to_dict(structure_from_dict(json.loads(json.dumps(data)))) == data  # round trip
    return data


def assert_stored_nonzeros(data: dict, oracle: dict[str, int]) -> None:
    got = {tensor["name"]: tensor["nonzero"] for tensor in data["tensors"]}
    for name, nonzero in oracle.items():
        assert got[name] == nonzero, name
    assert data["nonzero_params"] == sum(got.values())


def zero_layer_(model, index: int) -> None:
    with torch.no_grad():
        layer = model.model.layers[index]
        for part in (layer.self_attn, layer.mlp):
            for parameter in part.parameters():
                parameter.zero_()


@pytest.mark.parametrize("kind, format_name, bits", [
    ("w4a16", "pack-quantized", 4), ("w4a16-asym", "pack-quantized", 4), ("w4a16-channel", "pack-quantized", 4),
    ("w8a16", "pack-quantized", 8), ("fp8", "naive-quantized", 8), ("fp8-dynamic", "float-quantized", 8),
    ("w8a8", "int-quantized", 8)])
def test_compressed_tensors_formats_count_as_the_dense_model(tmp_path, kind, format_name, bits):
    model = pruned_llama()
    zero_layer_(model, 2)
    dense = copy.deepcopy(model)
    oracle = save_compressed_tensors(model, str(tmp_path / kind), kind)
    data = analysed(tmp_path / kind)
    assert_matches(data, dense)
    quantization = data["quantization"]
    assert (quantization["method"], quantization["format"], quantization["bits"]) == ("compressed-tensors", format_name, bits)
    assert quantization["unquantized_modules"] == ["lm_head", "model.embed_tokens"]
    linear = sum(module.weight.numel() for name, module in dense.named_modules()
                 if isinstance(module, torch.nn.Linear) and ".layers." in name)
    assert quantization["quantized_params"] == linear
    files = sum(path.stat().st_size for path in (tmp_path / kind).glob("*.safetensors"))
    assert 0 < quantization["storage_bytes"] < files  # tensor data, without the header
    assert quantization["bits_per_param"] == round(quantization["storage_bytes"] * 8 / data["total_params"], 4)
    scanned = analysed(tmp_path / kind, sparsity=True)
    assert_stored_nonzeros(scanned, oracle)
    assert scanned["layers"][0]["nm_sparsity"] == "2:4"  # the 2:4 pattern survives, seen on the codes


def test_a_dense_model_with_only_a_compressed_tensors_config_is_analysed(tmp_path):
    """llm-compressor writes `quant_method: compressed-tensors` for sparse-only models saved dense."""
    model = pruned_llama()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "sparsity_config": {},
                                     "transform_config": {}, "version": "0.20.1"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = analysed(tmp_path)
    assert_matches(data, model)
    assert data["quantization"]["format"] == "dense" and data["quantization"]["quantized_params"] == 0


def test_an_undecodable_format_is_one_line_naming_it(tmp_path):
    model = pruned_llama()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="nvfp4-pack-quantized: prunescope cannot decode"):
        analyse_path(str(tmp_path))
    config["quantization_config"] = {"quant_method": "hqq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"quantized checkpoint \(hqq\): prunescope cannot decode"):
        analyse_path(str(tmp_path))


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_bitsandbytes_cpu_backend(tmp_path, kind):
    pytest.importorskip("bitsandbytes")
    model = pruned_llama()
    dense = copy.deepcopy(model)
    oracle = save_bitsandbytes(model, str(tmp_path / kind), kind)
    data = analysed(tmp_path / kind)
    assert_matches(data, dense)
    quantization = data["quantization"]
    assert (quantization["method"], quantization["format"]) == ("bitsandbytes", kind)
    assert quantization["params_by_storage"][kind] == sum(
        module.weight.numel() for name, module in dense.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head")
    assert_stored_nonzeros(analysed(tmp_path / kind, sparsity=True), oracle)


@pytest.mark.parametrize("method, options", [
    ("gptq", {}), ("gptq", {"act_order": True}), ("gptq", {"symmetric": True}), ("gptq", {"version": 2}),
    ("awq", {}), ("awq-gemv", {})])
def test_gptq_and_awq_packing(tmp_path, method, options):
    model = pruned_llama()
    zero_layer_(model, 2)
    oracle = save_packed(model, str(tmp_path), method, **options)
    data = analysed(tmp_path)
    assert_matches(data, model)
    quantization = data["quantization"]
    assert quantization["format"] == {"gptq": f"gptq v{options.get('version', 1)}", "awq": "awq gemm",
                                      "awq-gemv": "awq gemv"}[method]
    assert quantization["bits"] == 4 and quantization["group_size"] == 32
    assert quantization["unquantized_modules"] == ["lm_head", "model.embed_tokens"]
    scanned = analysed(tmp_path, sparsity=True)
    assert_stored_nonzeros(scanned, oracle)
    assert scanned["layers"][0]["nm_sparsity"] == "2:4"  # packing order (and act-order) undone


def test_qweight_without_a_config_is_one_line(tmp_path):
    save_packed(pruned_llama(), str(tmp_path), "awq")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quantized checkpoint: packed `qweight` tensors without a quantization config"):
        analyse_path(str(tmp_path))


def test_autogptq_quantize_config_json_beside_the_weights(tmp_path):
    """Old AutoGPTQ checkpoints: config.json without quantization_config, quantize_config.json beside it."""
    model = pruned_llama()
    oracle = save_packed(model, str(tmp_path), "gptq", act_order=True)
    config = json.loads((tmp_path / "config.json").read_text())
    quantization = config.pop("quantization_config")
    del quantization["checkpoint_format"], quantization["quant_method"]  # AutoGPTQ wrote neither
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "quantize_config.json").write_text(json.dumps(quantization))
    data = analysed(tmp_path)
    assert_matches(data, model)
    assert data["quantization"]["format"] == "gptq v1"
    assert "quantization config from quantize_config.json" in data["quantization"]["notes"]
    assert_stored_nonzeros(analysed(tmp_path, sparsity=True), oracle)


LEGACY_COMPRESSED_TENSORS = "compressed-tensors==0.14.0.1"  # the last version with the sparse compressors


@pytest.fixture(scope="session")
def legacy_compressed_tensors(pytestconfig, tmp_path_factory) -> str:
    """compressed-tensors 0.14 (pure Python) in a folder of its own, for a subprocess: the sparse
    compressors were removed in 0.15, and the current version stays installed for everything else."""
    import os
    import subprocess
    import sys

    cache = getattr(pytestconfig, "cache", None)  # kept between runs, unless pytest runs without its cache
    folder = str(cache.mkdir("compressed-tensors-0.14") if cache else tmp_path_factory.mktemp("compressed-tensors-0.14"))
    if not os.path.isdir(os.path.join(folder, "compressed_tensors")):
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", folder,
                                 LEGACY_COMPRESSED_TENSORS], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot install {LEGACY_COMPRESSED_TENSORS}: {result.stderr.strip()[-300:]}")
    return folder


@pytest.mark.parametrize("kind, storage, sparsity", [("sparse-bitmask", "BF16 bitmask", "sparse-bitmask"),
                                                     ("sparse-24-fp8", "F8_E4M3 2:4", "sparse-24-bitmask"),
                                                     ("w4a16-actorder", "int4", None)])
def test_compressed_tensors_sparse_and_act_order_formats(tmp_path, legacy_compressed_tensors, kind, storage, sparsity):
    import os
    import subprocess
    import sys

    model = pruned_llama(structural=False)  # transformers cannot load pruned shapes back in the subprocess
    model.save_pretrained(tmp_path / "dense")
    tests = os.path.dirname(__file__)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([legacy_compressed_tensors, tests])}
    subprocess.run([sys.executable, os.path.join(tests, "write_legacy_compressed_tensors.py"), str(tmp_path / "dense"),
                    str(tmp_path / kind), kind], check=True, env=environment, capture_output=True)
    oracle = json.loads((tmp_path / kind / "oracle.json").read_text())
    (tmp_path / kind / "oracle.json").unlink()
    data = analysed(tmp_path / kind)
    assert_matches(data, model)
    quantization = data["quantization"]
    assert quantization["config_version"] == "0.14.0.1"
    assert set(quantization["params_by_storage"]) == {"BF16", storage}
    assert quantization["sparsity_format"] == sparsity
    assert quantization["act_order"] == ("group" if kind == "w4a16-actorder" else None)
    scanned = analysed(tmp_path / kind, sparsity=True)
    assert_stored_nonzeros(scanned, oracle)
    assert scanned["nm_sparsity"] is None or scanned["layers"][0]["nm_sparsity"] == "2:4"


def test_batch_comparison_and_report_show_format_bits_and_stored_bytes(tmp_path):
    """A W4A16 model against its dense base: the parameters match, the stored bytes shrink, and the
    batch table, the records and the report say which format at how many bits per parameter."""
    import io

    from prunescope.batch import run_batch
    from prunescope.report.command import run_report

    model = pruned_llama()
    model.save_pretrained(tmp_path / "base")
    save_compressed_tensors(pruned_llama(), str(tmp_path / "models" / "w4a16"), "w4a16")
    out = io.StringIO()
    assert run_batch(str(tmp_path / "models"), str(tmp_path / "base"), str(tmp_path / "out"), merge=True, out=out) == 0
    analysis = tmp_path / "models" / "w4a16" / "analysis"
    structure = json.loads((analysis / "model_structure.json").read_text())
    comparison = json.loads((analysis / "model_comparison.json").read_text())
    base_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    assert comparison["total_params"]["reduction_ratio"] == 0.0
    assert comparison["stored_bytes"]["original"] == base_bytes
    assert comparison["stored_bytes"]["pruned"] == structure["quantization"]["storage_bytes"] < base_bytes / 2
    bits = structure["quantization"]["bits_per_param"]
    assert f"pack-quantized {bits:.2f} bits/param" in out.getvalue()
    assert "stored bytes:" in (analysis / "structure_summary.txt").read_text()
    batch = json.loads((tmp_path / "out" / "batch_analysis_results.json").read_text())
    record = next(model for model in batch["models"] if model["name"] == "w4a16")
    assert record["quantization"] == {"format": "pack-quantized", "bits_per_param": bits}
    assert run_report(str(tmp_path / "out"), str(tmp_path / "models"), out=io.StringIO()) == 0
    table = next((tmp_path / "out" / "tables").glob("*.md")).read_text()
    assert "| Format | Bits/param |" in table and f"| pack-quantized | {bits:.2f} |" in table


@pytest.mark.parametrize("kind", ["w4a16", "w4a16-asym", "w4a16-channel"])
def test_packed_int4_word_counts_equal_the_unpacked_mask(tmp_path, kind):
    """The packed-word fast path of the int4 scan counts exactly what the unpacked nonzero mask gives:
    nonzeros, N:M groups (in total and per row), zero rows and columns, on unstructured sparsity with
    rows and columns zeroed in place."""
    import numpy as np

    from prunescope.measure.scan import contents_of_blocks, count_rows
    from prunescope.measure.scan_quantized import _count_packed_nibbles, _packed_nibbles, nonzero_mask
    from prunescope.quantized import decode_quantization
    from prunescope.readers import read_tensor_index

    model = pruned_llama(two_four=False)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                weight = module.weight
                weight.mul_(torch.rand(weight.shape) > 0.6)  # unstructured: some groups break 2:4, some 4:8
                weight[3].zero_()
                weight[:, 8:16].zero_()
    save_compressed_tensors(model, str(tmp_path), kind)
    config = json.loads((tmp_path / "config.json").read_text())
    index = decode_quantization(read_tensor_index([str(tmp_path / "model.safetensors")]), config)
    items = list(index.encoded.values())
    assert items and all(_packed_nibbles(item) for item in items)
    for item in items:
        for per_row in (False, True):
            fast = contents_of_blocks(item.logical, _count_packed_nibbles(item, per_row))
            mask = count_rows(item.logical, nonzero_mask(item), per_row)
            assert (fast.nonzero, fast.nm_groups) == (mask.nonzero, mask.nm_groups), item.logical.name
            assert np.array_equal(fast.row_nonzero, mask.row_nonzero)
            assert np.array_equal(fast.column_nonzero, mask.column_nonzero)
            assert fast.row_compliant.keys() == mask.row_compliant.keys()
            for pattern in mask.row_compliant:
                assert np.array_equal(fast.row_compliant[pattern], mask.row_compliant[pattern])
        assert 0 < mask.nm_groups["2:4"][0] < mask.nm_groups["2:4"][1] and mask.zero_rows >= 1


def test_old_compression_config_key_and_a_corrupt_logical_shape(tmp_path):
    """compressed-tensors <= 0.6 wrote the same content under `compression_config`; a weight_shape that
    does not fit its packed weight is one line, never a guessed count."""
    from safetensors.torch import load_file, save_file

    model = pruned_llama()
    dense = copy.deepcopy(model)
    save_compressed_tensors(model, str(tmp_path), "w4a16")
    config = json.loads((tmp_path / "config.json").read_text())
    config["compression_config"] = config.pop("quantization_config")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_matches(analysed(tmp_path), dense)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.0.mlp.down_proj.weight_shape"] = torch.tensor([64, 999])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="down_proj.weight_packed: .*int32 words per row of 999 values"):
        analyse_path(str(tmp_path))


def test_native_fp8_with_block_scales(tmp_path):
    """DeepSeek-V3-style FP8 (`weight_scale_inv` per 128x128 block), written in its documented layout
    with torch's float8_e4m3fn (no library writes it on a CPU): the counts are the dense model's, the
    stored nonzeros are torch's own count of the fp8 values."""
    from safetensors.torch import save_file

    model = pruned_llama()
    state, oracle = {}, {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".weight") and ".layers." in name and tensor.dim() == 2:
            codes = tensor.float().to(torch.float8_e4m3fn)
            state[name] = codes
            blocks = (-(-tensor.shape[0] // 128), -(-tensor.shape[1] // 128))
            state[name + "_scale_inv"] = torch.ones(blocks, dtype=torch.float32)
            oracle[name] = int((codes.float() != 0).sum())
        else:
            state[name] = tensor.contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = analysed(tmp_path)
    assert_matches(data, model)
    assert data["quantization"]["format"] == "fp8 e4m3 blocks [128, 128]"
    assert data["quantization"]["params_by_storage"]["F8_E4M3"] == sum(
        module.weight.numel() for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head")
    assert_stored_nonzeros(analysed(tmp_path, sparsity=True), oracle)


def test_small_tensors_side_by_side_are_read_once(tmp_path, monkeypatch):
    """The safetensors library writes a file's data by dtype, then name: the I64 weight_shape tensors of
    a compressed-tensors model lie together, and one read serves them all; a file cut short is still
    refused, never read past."""
    import os

    from safetensors.torch import save_file

    from prunescope.quantized import SmallReads
    from prunescope.readers.safetensors import read_safetensors_file

    shapes = {f"model.layers.{n}.mlp.up_proj.weight_shape": torch.tensor([64 + n, 128]) for n in range(40)}
    save_file({**shapes, "model.embed_tokens.weight": torch.zeros(32, 8, dtype=torch.bfloat16)},
              str(tmp_path / "model.safetensors"))
    tensors = [t for t in read_safetensors_file(str(tmp_path / "model.safetensors")) if t.name in shapes]
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: reads.append(size) or real_pread(fd, size, offset))
    with SmallReads() as small:
        assert {t.name: small.integers(t) for t in tensors} == {name: value.tolist() for name, value in shapes.items()}
    assert len(reads) == 1

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "model.safetensors").read_bytes()[:-(32 * 8 * 2 + 100)])
    last = max(tensors, key=lambda t: t.offset)
    with SmallReads() as small, pytest.raises(CheckpointError, match="truncated"):
        small.integers(last.replace(file=str(cut)))
