"""Checkpoints written by the quantization libraries themselves (GPTQModel, AutoAWQ, llm-compressor), in
virtual environments of their own, committed under tests/fixtures/ with the oracle computed there when
they were made (scripts/make_quantized_fixtures.py): the dense pruned model's `named_parameters()` and
`num_parameters()`, and `(w != 0).sum()` of the library's own dequantization of every quantized linear.
These tests only read the files: none of the libraries is needed."""

from __future__ import annotations

import json
import math
import os

import pytest

from prunescope.pipeline import ScanOptions, analyse_path
from prunescope.schema import structure_from_dict, structure_to_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NAMES = sorted(name for name in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, name, "oracle.json")))
FORMATS = {  # fixture -> (method, format, bits, group size)
    "autoawq-gemm-g64": ("awq", "awq gemm", 4, 64),
    "autoawq-gemv-g32": ("awq", "awq gemv", 4, 32),
    "gptqmodel-gptq-g32-sym": ("gptq", "gptq v1", 4, 32),
    "gptqmodel-gptq-g64-act-order-asym": ("gptq", "gptq v1", 4, 64),
    "gptqmodel-gptq_v2-g32-asym": ("gptq", "gptq v2", 4, 32),
    "llmcompressor-sparsegpt24-w4a16": ("compressed-tensors", "pack-quantized", 4, 32),
    "llmcompressor-fp8-dynamic": ("compressed-tensors", "float-quantized", 8, None),
}
PROJECTIONS = {"attention": ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
               "mlp": ("mlp", ("gate_proj", "up_proj", "down_proj"))}


def test_every_fixture_is_tested():
    assert NAMES == sorted(FORMATS)


def load(name: str) -> tuple[str, dict]:
    folder = os.path.join(FIXTURES, name)
    with open(os.path.join(folder, "oracle.json")) as handle:
        return folder, json.load(handle)


def analysed(folder: str, sparsity: bool = False) -> dict:
    structure = analyse_path(folder, scan=ScanOptions(workers=2) if sparsity else None).structure
    data = structure_to_dict(structure)
    assert structure_to_dict(structure_from_dict(json.loads(json.dumps(data)))) == data  # round trip
    return data


def expected_layers(dense: dict) -> list[dict]:
    """Per-layer counts of the dense pruned model, from its named_parameters() shapes."""
    numel = {name: math.prod(shape) for name, shape in dense["parameters"].items()}
    layers = []
    index = 0
    while any(name.startswith(f"model.layers.{index}.") for name in numel):
        prefix = f"model.layers.{index}."

        def under(part: str) -> int:
            return sum(count for name, count in numel.items() if name.startswith(prefix + part + "."))
        layer = {"total": sum(count for name, count in numel.items() if name.startswith(prefix)),
                 "norm": sum(count for name, count in numel.items()
                             if name.startswith(prefix) and name[len(prefix):].split(".")[0].endswith("norm")),
                 "is_zero_layer": index in dense["zero_layers"]}
        for part, (module, projections) in PROJECTIONS.items():
            layer[part] = {"total": under(module), **{projection: under(f"{module}.{projection}")
                                                      for projection in projections}}
        shape = dense["parameters"]
        layer["attention"]["num_heads"] = shape[prefix + "self_attn.q_proj.weight"][0] // dense["head_dim"]
        layer["attention"]["num_kv_heads"] = shape[prefix + "self_attn.k_proj.weight"][0] // dense["head_dim"]
        layer["mlp"]["intermediate_size"] = shape[prefix + "mlp.gate_proj.weight"][0]
        layers.append(layer)
        index += 1
    return layers


@pytest.mark.parametrize("name", NAMES)
def test_real_library_checkpoint_counts_as_the_dense_pruned_model(name):
    folder, oracle = load(name)
    dense = oracle["dense"]
    data = analysed(folder)
    numel = {parameter: math.prod(shape) for parameter, shape in dense["parameters"].items()}
    assert data["total_params"] == dense["num_parameters"] == sum(numel.values())
    assert data["embedding_params"] == numel["model.embed_tokens.weight"]
    assert data["lm_head_params"] == numel["lm_head.weight"]
    assert data["tied_embeddings"] is False
    expected = expected_layers(dense)
    assert data["layer_summary"]["num_layers"] == len(expected)
    assert data["layer_summary"]["total_layer_params"] == sum(layer["total"] for layer in expected)
    for got, want in zip(data["layers"], expected, strict=True):
        for key in ("total", "norm", "is_zero_layer"):
            assert got[key] == want[key], (name, got["layer_idx"], key)
        for part in PROJECTIONS:
            for key, value in want[part].items():
                assert got[part][key] == value, (name, got["layer_idx"], part, key)
    method, format_name, bits, group_size = FORMATS[name]
    quantization = data["quantization"]
    assert (quantization["method"], quantization["format"], quantization["bits"]) == (method, format_name, bits)
    if group_size:
        assert quantization["group_size"] == group_size
    assert quantization["quantized_params"] == sum(math.prod(entry["shape"]) for entry in oracle["quantized"].values())
    assert quantization["unquantized_modules"] == ["lm_head", "model.embed_tokens"]


@pytest.mark.parametrize("name", NAMES)
def test_real_library_checkpoint_stored_nonzeros_are_the_library_dequantization(name):
    folder, oracle = load(name)
    data = analysed(folder, sparsity=True)
    got = {tensor["name"]: (tensor["numel"], tensor["nonzero"]) for tensor in data["tensors"]}
    want = {parameter: (math.prod(entry["shape"]), entry["nonzero"]) for parameter, entry in oracle["quantized"].items()}
    want.update({parameter: (math.prod(oracle["dense"]["parameters"][parameter]), nonzero)
                 for parameter, nonzero in oracle["unquantized"].items()})
    assert got == want
    assert data["nonzero_params"] == sum(nonzero for _, nonzero in want.values())
