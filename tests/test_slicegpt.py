"""SliceGPT checkpoints built the way SliceGPT writes them, analysed natively.

SliceGPT (microsoft/TransformerCompression) saves `torch.save(model.state_dict())` as
`<model>_<sparsity>.pt` beside `<model>_<sparsity>.json` (its SlicingConfig). After layernorm fusion
and slicing: no norm weights at all; input-side slices cut weight columns, output-side slices cut
rows (and biases); per layer `attn_shortcut_Q` (attn_in x attn_out) and `mlp_shortcut_Q`
(mlp_in x mlp_out; Phi-2's parallel blocks have only the attention one); embeddings untied; the last
layer's MLP output keeps the full hidden size. OPT and Phi-2 fold LayerNorm biases into linear
biases (and a new lm_head bias for OPT). Sliced tensors are views of whole storages.
"""

import json

import pytest
import torch

import builders
from prunescope.batch import run_batch
from prunescope.pipeline import analyse_path
from prunescope.schema import structure_to_dict
from test_families import opt, phi2, phi3


def sliced_state_dict(model, family: str, width: int):
    """(state dict, SlicingConfig dict) as SliceGPT leaves them for a constant sliced width."""
    config = model.config
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    last = layers - 1
    source = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    state = {}
    prefix = "model.decoder.layers" if family == "opt" else "model.layers"
    embed = "model.decoder.embed_tokens.weight" if family == "opt" else "model.embed_tokens.weight"
    state[embed] = source[embed][:, :width]  # a view: torch.save writes the whole storage
    if family == "opt":
        state["model.decoder.embed_positions.weight"] = source["model.decoder.embed_positions.weight"][:, :width]
    lm_head = source[embed].clone() if "lm_head.weight" not in source else source["lm_head.weight"].clone()
    state["lm_head.weight"] = lm_head  # untied, full head dimension
    if family == "opt":
        state["lm_head.bias"] = torch.zeros(lm_head.shape[0])
    if family == "phi2":
        state["lm_head.bias"] = source["lm_head.bias"]

    def columns(name, count=width):
        state[name] = source[name][:, :count]

    def rows(name, count, bias=False):
        state[name + ".weight"] = source[name + ".weight"][:count]
        if bias:
            state[name + ".bias"] = (source.get(name + ".bias", torch.zeros(source[name + ".weight"].shape[0])))[:count]

    for i in range(layers):
        layer = f"{prefix}.{i}"
        mlp_out = hidden if i == last else width
        if family in ("llama", "opt", "phi2"):
            for projection in ("q_proj", "k_proj", "v_proj"):
                columns(f"{layer}.self_attn.{projection}.weight")
                if family != "llama":
                    state[f"{layer}.self_attn.{projection}.bias"] = source[f"{layer}.self_attn.{projection}.bias"]
        if family == "phi3":
            columns(f"{layer}.self_attn.qkv_proj.weight")
        if family in ("llama", "phi3"):
            rows(f"{layer}.self_attn.o_proj", width)
            if family == "llama":
                columns(f"{layer}.mlp.gate_proj.weight")
                columns(f"{layer}.mlp.up_proj.weight")
            else:
                columns(f"{layer}.mlp.gate_up_proj.weight")
            rows(f"{layer}.mlp.down_proj", mlp_out)
        if family == "opt":
            rows(f"{layer}.self_attn.out_proj", width, bias=True)
            columns(f"{layer}.fc1.weight")
            state[f"{layer}.fc1.bias"] = source[f"{layer}.fc1.bias"]
            rows(f"{layer}.fc2", mlp_out, bias=True)
        if family == "phi2":
            rows(f"{layer}.self_attn.dense", mlp_out, bias=True)
            columns(f"{layer}.mlp.fc1.weight")
            state[f"{layer}.mlp.fc1.bias"] = source[f"{layer}.mlp.fc1.bias"]
            rows(f"{layer}.mlp.fc2", mlp_out, bias=True)
            state[f"{layer}.attn_shortcut_Q"] = torch.randn(width, mlp_out)
        else:
            state[f"{layer}.attn_shortcut_Q"] = torch.randn(width, width)
            state[f"{layer}.mlp_shortcut_Q"] = torch.randn(width, mlp_out)
    per_layer = {str(i): width for i in range(layers)}
    slicing = {
        "hidden_size": hidden, "layers_num": layers, "do_slice_head": False, "parallel_blocks": family == "phi2",
        "embedding_dimensions": {"0": width, "1": width} if family == "opt" else {"0": width},
        "attention_input_dimensions": per_layer,
        "attention_output_dimensions": {} if family == "phi2" else per_layer,
        "mlp_input_dimensions": {} if family == "phi2" else per_layer,
        "mlp_output_dimensions": {**per_layer, str(last): hidden},
        "head_dimension": hidden, "const_dimension": None,
    }
    return state, slicing


def write_slicegpt(folder, stem, model, family, width, copy_config=True):
    state, slicing = sliced_state_dict(model, family, width)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / f"{stem}.pt")
    (folder / f"{stem}.json").write_text(json.dumps(slicing))
    if copy_config:  # SliceGPT copies the unsliced config and tokenizer files beside its output
        (folder / "config.json").write_text(model.config.to_json_string())
        (folder / "tokenizer_config.json").write_text("{}")
    return state, slicing


def layer_sum(state, prefix, *parts):
    return sum(tensor.numel() for name, tensor in state.items()
               if name.startswith(prefix) and any(part in name[len(prefix):] for part in parts))


FAMILIES = {"llama": lambda: builders.llama(), "opt": opt, "phi2": phi2, "phi3": phi3}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_slicegpt_counts_equal_the_state_dict(tmp_path, family):
    model = FAMILIES[family]()
    width = 24
    state, slicing = write_slicegpt(tmp_path / "sliced", f"{family}-tiny_0.25", model, family, width)
    analysis = analyse_path(str(tmp_path / "sliced" / f"{family}-tiny_0.25.pt"))
    structure = structure_to_dict(analysis.structure)
    assert analysis.checkpoint.kind == "slicegpt"
    assert structure["total_params"] == sum(tensor.numel() for tensor in state.values())
    assert structure["tied_embeddings"] is False
    prefix = "model.decoder.layers" if family == "opt" else "model.layers"
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    for layer in structure["layers"]:
        at = f"{prefix}.{layer['layer_idx']}."
        assert layer["total"] == layer_sum(state, at, "")
        assert layer["attention"]["total"] == layer_sum(state, at, "self_attn.")
        assert layer["mlp"]["total"] == layer_sum(state, at, "mlp.", "fc1.", "fc2.")
        assert layer["shortcut"] == layer_sum(state, at, "shortcut_Q")
        assert layer["norm"] == 0
        # Slicing never changes heads, KV heads or the intermediate size.
        assert layer["attention"]["num_heads"] == config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        assert layer["attention"]["num_kv_heads"] == kv_heads
        intermediate = getattr(config, "intermediate_size", None) or config.ffn_dim
        assert layer["mlp"]["intermediate_size"] == intermediate
        widths = layer["widths"]
        assert widths["attention_input"] == width
        assert widths["mlp_output"] == (config.hidden_size if layer["layer_idx"] == config.num_hidden_layers - 1
                                        else width)
    assert structure["slicing"]["mismatches"] == []
    assert structure["slicing"]["summary"] == f"SliceGPT 25%: hidden {config.hidden_size} → {width}"
    assert structure["head_dim"] == head_dim
    assert not [m for m in structure["config_mismatches"] if m["field"] != "num_hidden_layers"]


def test_slicing_config_disagreeing_with_shapes_is_reported(tmp_path):
    model = builders.llama()
    write_slicegpt(tmp_path, "llama_0.25", model, "llama", 24)
    slicing = json.loads((tmp_path / "llama_0.25.json").read_text())
    slicing["attention_input_dimensions"]["2"] = 40
    (tmp_path / "llama_0.25.json").write_text(json.dumps(slicing))
    structure = structure_to_dict(analyse_path(str(tmp_path / "llama_0.25.pt")).structure)
    assert structure["slicing"]["mismatches"] == [
        {"field": "attention_input_dimensions", "layer": 2, "config": 40, "actual": 24}]


def test_batch_with_standard_pruner_and_slicegpt_models(tmp_path, capsys):
    base = builders.llama()
    base.save_pretrained(tmp_path / "base")
    models = tmp_path / "baselines"
    magnitude = builders.llama()
    magnitude.load_state_dict(base.state_dict())
    magnitude.save_pretrained(models / "Magnitude_2000")
    pruner = builders.llama()
    builders.prune_structurally(pruner, {0: (2, 1, 48)})
    (models / "LLM-Pruner" / "prune_log" / "x").mkdir(parents=True)
    torch.save({"model": pruner, "tokenizer": None}, models / "LLM-Pruner" / "prune_log" / "x" / "pytorch_model.bin")
    # Two sparsities in one folder: each is a model of its own, named after its file.
    states = {}
    for sparsity, width in (("0.25", 48), ("0.3", 40)):
        states[sparsity], _ = write_slicegpt(models / "SliceGPT", f"Llama-tiny_{sparsity}", base, "llama", width)
    out = tmp_path / "out"
    assert run_batch(str(models), base_model=str(tmp_path / "base"), output_dir=str(out), merge=True) == 0
    printed = capsys.readouterr().out
    assert "SliceGPT 25%: hidden 64 → 48" in printed
    records = {r["name"]: r for r in json.loads((out / "batch_analysis_results.json").read_text())["models"]}
    assert {name: r["status"] for name, r in records.items()} == {
        "LLM-Pruner": "analysed", "Magnitude_2000": "analysed",
        "SliceGPT/Llama-tiny_0.25": "analysed", "SliceGPT/Llama-tiny_0.3": "analysed"}
    summary = {m["name"]: m for m in json.loads((out / "models_summary.json").read_text())["models"]}
    assert summary["SliceGPT/Llama-tiny_0.3"]["total_params"] == sum(t.numel() for t in states["0.3"].values())
    assert summary["SliceGPT/Llama-tiny_0.25"]["kind"] == "slicegpt"
    comparison = json.loads((models / "SliceGPT" / "analysis" / "Llama-tiny_0.25" / "model_comparison.json").read_text())
    layer = comparison["layers"][0]
    assert layer["attention"]["total"]["reduced"] > 0  # fewer parameters in the projections...
    assert layer["shortcut"]["reduced"] < 0  # ...more in the shortcuts
    assert layer["shortcut"]["pruned"] == 48 * 48 * 2
    assert not (out / "analyze_slicegpt.sh").exists()
