"""--sparsity: every count against torch's own `(p == 0)` on checkpoints written by transformers."""

import importlib.util
import json

import pytest
import torch

import builders
from oracle import zero_layer_
from prunescope.batch import run_batch
from prunescope.pipeline import ScanOptions, analyse_path
from prunescope.readers import read_tensor_index
from prunescope.schema import structure_to_dict
from prunescope.measure.scan import scan_tensors

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def nonzero(module) -> int:
    return sum(int((parameter != 0).sum()) for parameter in module.parameters())


def scanned(path, engine_device="cpu") -> dict:
    return structure_to_dict(analyse_path(str(path), scan=ScanOptions(device=engine_device)).structure)


def magnitude_prune_(model, share=0.5):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.weight"):
                threshold = parameter.abs().float().flatten().kthvalue(int(parameter.numel() * share)).values
                parameter[parameter.abs() <= threshold] = 0


def wanda_nm_(model, zeros: int, group: int):
    """Wanda's N:M pattern: in every `group` consecutive inputs of each row, the `zeros` smallest are zero."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.weight"):
                blocks = parameter.view(parameter.shape[0], -1, group)
                smallest = blocks.abs().topk(zeros, dim=-1, largest=False).indices
                blocks.scatter_(-1, smallest, 0.0)


def assert_counts(structure: dict, model):
    assert structure["nonzero_params"] == nonzero(model)
    assert structure["sparsity"] == pytest.approx(1 - nonzero(model) / model.num_parameters())
    named = dict(model.named_parameters())
    per_tensor = {entry["name"]: entry["nonzero"] for entry in structure["tensors"]}
    for name, parameter in named.items():
        if name in per_tensor:
            assert per_tensor[name] == int((parameter != 0).sum()), name
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        assert got["nonzero"] == nonzero(layer)
        assert got["attention"]["nonzero"] == nonzero(layer.self_attn)
        assert got["mlp"]["nonzero"] == nonzero(layer.mlp)
        for projection in ATTENTION:
            assert got["attention"][f"{projection}_nonzero"] == nonzero(getattr(layer.self_attn, projection))
        for projection in MLP:
            assert got["mlp"][f"{projection}_nonzero"] == nonzero(getattr(layer.mlp, projection))


def test_magnitude_pruned_counts_in_every_dtype_with_negative_zero(tmp_path):
    model = builders.llama()
    magnitude_prune_(model)
    zero_layer_(model.model.layers[2], negative=True)
    with torch.no_grad():  # -0.0 scattered through a live layer too
        weight = model.model.layers[0].self_attn.q_proj.weight
        weight[weight == 0] = -0.0
    assert torch.signbit(model.model.layers[0].self_attn.q_proj.weight[model.model.layers[0].self_attn.q_proj.weight == 0]).all()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        converted = model.to(dtype)
        converted.save_pretrained(tmp_path / str(dtype))
        structure = scanned(tmp_path / str(dtype))
        assert_counts(structure, converted)
        assert structure["layers"][2]["nonzero"] == nonzero(converted.model.layers[2]) == \
            sum(p.numel() for p in converted.model.layers[2].input_layernorm.parameters()) * 2
        assert structure["layers"][2]["is_zero_layer"] is True


@pytest.mark.parametrize("zeros,group,expected", [(2, 4, "2:4"), (4, 8, "4:8")])
def test_nm_patterns(tmp_path, zeros, group, expected):
    model = builders.llama()
    wanda_nm_(model, zeros, group)
    model.save_pretrained(tmp_path / "model")
    structure = scanned(tmp_path / "model")
    assert_counts(structure, model)
    assert structure["nm_sparsity"] == expected
    assert [layer["nm_sparsity"] for layer in structure["layers"]] == [expected] * 4
    assert structure["layers"][0]["attention"]["q_proj_nm"][expected] == 1.0
    if expected == "4:8":  # 4 zeros in 8 does not mean 2 in every 4
        assert structure["layers"][0]["attention"]["q_proj_nm"]["2:4"] < 1.0


def test_unstructured_is_not_nm(tmp_path):
    model = builders.llama()
    magnitude_prune_(model)
    model.save_pretrained(tmp_path / "model")
    structure = scanned(tmp_path / "model")
    assert structure["nm_sparsity"] is None
    weight = model.model.layers[1].mlp.up_proj.weight
    groups = (weight.view(weight.shape[0], -1, 4) == 0).sum(-1)
    share = float((groups >= 2).float().mean())
    assert structure["layers"][1]["mlp"]["up_proj_nm"]["2:4"] == pytest.approx(share, abs=1e-6)


def test_heads_and_channels_zeroed_in_place(tmp_path):
    model = builders.llama(num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96)
    head_dim = 16
    with torch.no_grad():
        attention = model.model.layers[1].self_attn
        attention.q_proj.weight[head_dim:2 * head_dim] = 0  # query head 1
        attention.o_proj.weight[:, head_dim:2 * head_dim] = 0
        attention.k_proj.weight[:head_dim] = 0  # KV head 0
        attention.v_proj.weight[:head_dim] = 0
        mlp = model.model.layers[2].mlp
        channels = [3, 10, 50]
        mlp.gate_proj.weight[channels] = 0
        mlp.up_proj.weight[channels] = 0
        mlp.down_proj.weight[:, channels] = 0
    model.save_pretrained(tmp_path / "model")
    structure = scanned(tmp_path / "model")
    assert_counts(structure, model)
    layer1, layer2 = structure["layers"][1], structure["layers"][2]
    assert (layer1["attention"]["effective_heads"], layer1["attention"]["effective_kv_heads"]) == (3, 1)
    assert layer1["attention"]["q_proj_zero_rows"] == int((attention.q_proj.weight == 0).all(dim=1).sum())
    assert layer1["attention"]["o_proj_zero_columns"] == int((attention.o_proj.weight == 0).all(dim=0).sum())
    assert layer1["mlp"]["effective_intermediate_size"] == 96
    assert layer2["mlp"]["effective_intermediate_size"] == 96 - len(channels)
    assert layer2["mlp"]["down_proj_zero_columns"] == len(channels)
    assert structure["layers"][0]["attention"]["effective_heads"] == 4


def test_wanda_comparison_shows_the_real_reduction(tmp_path):
    base = builders.llama()
    base.save_pretrained(tmp_path / "base")
    wanda = builders.llama()
    wanda.load_state_dict(base.state_dict())
    wanda_nm_(wanda, 2, 4)
    wanda.save_pretrained(tmp_path / "models" / "Wanda_2-4")
    assert run_batch(str(tmp_path / "models"), base_model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"),
                     sparsity=True, device="cpu") == 0
    comparison = json.loads((tmp_path / "models" / "Wanda_2-4" / "analysis" / "model_comparison.json").read_text())
    assert comparison["total_params"]["reduction_ratio"] == 0.0
    assert comparison["nonzero_params"]["original"] == nonzero(base)
    assert comparison["nonzero_params"]["pruned"] == nonzero(wanda)
    assert comparison["layers"][0]["mlp"]["nonzero"]["pruned"] == nonzero(wanda.model.layers[0].mlp)
    # The analysis on disk is reused by a later --sparsity run, and a plain run keeps its contents.
    assert run_batch(str(tmp_path / "models"), output_dir=str(tmp_path / "out"), sparsity=True, device="cpu") == 0
    structure = json.loads((tmp_path / "models" / "Wanda_2-4" / "analysis" / "model_structure.json").read_text())
    assert structure["nonzero_params"] == nonzero(wanda)


def test_sliced_views_and_legacy_files_are_scanned_exactly(tmp_path):
    from test_slicegpt import write_slicegpt

    model = builders.llama()
    magnitude_prune_(model)
    state, _ = write_slicegpt(tmp_path / "sliced", "llama_0.25", model, "llama", 24)
    structure = scanned(tmp_path / "sliced" / "llama_0.25.pt")
    assert structure["nonzero_params"] == sum(int((tensor != 0).sum()) for tensor in state.values())
    torch.save(model.state_dict(), tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    legacy = structure_to_dict(analyse_path(str(tmp_path / "legacy.bin"), model.config.to_dict(),
                                            ScanOptions(device="cpu")).structure)
    assert legacy["nonzero_params"] == nonzero(model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_engines_count_alike(tmp_path, dtype):
    """The compiled kernel, numpy and the CUDA path's code (torch, run on the CPU): the same numbers,
    and each tensor's nonzeros are torch's own."""
    model = builders.llama()
    wanda_nm_(model, 2, 4)
    magnitude_prune_(model.model.layers[1])
    zero_layer_(model.model.layers[3], negative=True)
    model.to(dtype).save_pretrained(tmp_path / "model")
    tensors = list(read_tensor_index([str(tmp_path / "model" / "model.safetensors")]).tensors)
    by_numpy = scan_tensors(tensors, device="cpu", engine="numpy")
    engines = ["torch"] + (["numba"] if importlib.util.find_spec("numba") else [])
    parameters = dict(model.named_parameters())
    for engine in engines:
        by_engine = scan_tensors(tensors, device="cpu", engine=engine)
        for name, contents in by_numpy.items():
            other = by_engine[name]
            assert (contents.nonzero, contents.nm_groups, contents.zero_rows, contents.zero_columns) == \
                (other.nonzero, other.nm_groups, other.zero_rows, other.zero_columns), (engine, name)
            if contents.row_nonzero is not None:
                assert (contents.row_nonzero == other.row_nonzero).all(), (engine, name)
            if name in parameters:
                assert other.nonzero == int((parameters[name] != 0).sum()), (engine, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scan_matches_torch(tmp_path):
    model = builders.llama()
    magnitude_prune_(model)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    structure = scanned(tmp_path / "model", engine_device="cuda")
    assert_counts(structure, model.to(torch.bfloat16))


FLOAT_TORCH = (torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn)
SIGNED_TORCH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def pruned_weight(kind: str, width: int, dtype, seed: int):
    """50 x width weights: dense, 50% unstructured, 2:4 (Wanda's way) or all zero; about half of the
    zeros are -0.0, as `W * mask` leaves them; the 50% one has a dead input column and output row."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(50, width, generator=generator)
    if kind == "50%":
        weight[torch.rand(50, width, generator=generator) < 0.5] = 0
        weight[:, 3] = 0
        weight[7] = 0
    elif kind == "2:4":
        blocks = weight.view(50, -1, 4)
        blocks.scatter_(-1, blocks.abs().topk(2, dim=-1, largest=False).indices, 0.0)
    elif kind == "zeroed":
        weight.zero_()
    weight[(weight == 0) & (torch.rand(50, width, generator=generator) < 0.5)] = -0.0
    return weight.to(dtype)  # keeps the zeros' signs


@pytest.mark.parametrize("width", [64, 36, 30, 12])  # groups of 8 and 4, of 4 only, neither, one group of 8 + 4
@pytest.mark.parametrize("dtype", FLOAT_TORCH, ids=lambda dtype: str(dtype).split(".")[-1])
@pytest.mark.parametrize("engine", ["numba", "numpy2", "numpy1"])
def test_count_block_against_torch(monkeypatch, width, dtype, engine):
    """Both ways of counting a block (the compiled kernel, numpy with and without bitwise_count) give
    torch's own counts, for dense, 50%-sparse, 2:4 and zeroed blocks of every float dtype."""
    import numpy as np

    from prunescope.measure.scan import compiled_kernel, count_block

    kernel = None
    if engine == "numba":
        pytest.importorskip("numba")
        kernel = compiled_kernel()
    elif engine == "numpy1" and hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")  # the numpy < 2 way
    elif engine == "numpy2" and not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2")
    for kind in ("dense", "50%", "2:4", "zeroed") if width % 4 == 0 else ("dense", "50%", "zeroed"):
        weight = pruned_weight(kind, width, dtype, seed=width)
        if kind != "dense":
            assert torch.signbit(weight.float()[weight.float() == 0]).any(), "no -0.0 to count as zero"
        item = weight.element_size()
        bits = weight.view(SIGNED_TORCH[item]).numpy().view(f"uint{8 * item}")
        if kernel is not None and (width * item) % max(4, min(8, 4 * item)) == 0:
            assert kernel.count(bits, True) is not None  # the kernel's own pass, not numpy behind it
        nonzero, groups, row_counts, columns = count_block(bits, True, per_row_groups=True, kernel=kernel)
        _, totals, _, _ = count_block(bits, True, kernel=kernel)
        zero = weight.float() == 0
        assert nonzero == int((~zero).sum()), kind
        assert row_counts.tolist() == (~zero).sum(dim=1).tolist(), kind
        assert columns.dtype == bool and columns.tolist() == (~zero).any(dim=0).tolist(), kind
        for zeros, size in ((2, 4), (4, 8)):
            key = f"{zeros}:{size}"
            if width % size:
                assert key not in groups and key not in totals
                continue
            compliant_per_row = (zero.view(50, -1, size).sum(dim=-1) >= zeros).sum(dim=1)
            assert groups[key].tolist() == compliant_per_row.tolist(), (kind, key)
            assert totals[key] == int(compliant_per_row.sum()), (kind, key)


@pytest.mark.parametrize("item", [1, 2, 4, 8])
def test_kernel_counts_integers_with_their_sign_bit(item):
    """Integer tensors (not floats): a value with only its top bit set is nonzero."""
    import numpy as np

    pytest.importorskip("numba")
    from prunescope.measure.scan import compiled_kernel, count_block

    values = torch.randint(-3, 3, (20, 16), generator=torch.Generator().manual_seed(item), dtype=SIGNED_TORCH[item])
    values[2, :4] = torch.iinfo(SIGNED_TORCH[item]).min  # the sign bit alone: -0.0's bits
    bits = values.numpy().view(f"uint{8 * item}")
    counted = count_block(bits, signed_float=False, per_row_groups=True, kernel=compiled_kernel())
    assert counted[0] == int((values != 0).sum())
    assert counted[2].tolist() == (values != 0).sum(dim=1).tolist()
    by_numpy = count_block(bits, signed_float=False, per_row_groups=True)
    assert all(np.array_equal(counted[1][key], by_numpy[1][key]) for key in ("2:4", "4:8"))


def test_phi3_fused_projections_get_their_own_nm_and_zero_rows(tmp_path):
    from test_families import phi3

    model = phi3()
    wanda_nm_(model, 2, 4)
    with torch.no_grad():  # one query head zeroed in place inside the fused qkv_proj
        model.model.layers[0].self_attn.qkv_proj.weight[:8] = 0
    model.save_pretrained(tmp_path / "model")
    structure = scanned(tmp_path / "model")
    assert structure["nm_sparsity"] == "2:4"
    layer = structure["layers"][0]
    qkv = model.model.layers[0].self_attn.qkv_proj.weight
    q_rows = model.config.num_attention_heads * 8
    assert layer["attention"]["q_proj_nonzero"] == int((qkv[:q_rows] != 0).sum())
    assert layer["attention"]["q_proj_nm"] == {"2:4": 1.0, "4:8": 1.0}
    assert layer["attention"]["q_proj_zero_rows"] == 8
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    assert layer["mlp"]["up_proj_nonzero"] == int((gate_up[gate_up.shape[0] // 2:] != 0).sum())
