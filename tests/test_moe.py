"""Mixture-of-Experts families and DeepSeek's latent attention, written by transformers' save_pretrained
in both storage forms (per-expert tensors, its default; stacked 3-D tensors), checked field by field
against the module transformers builds; experts removed per layer with real operations on the module
(expert slices and router rows dropped, config left stale), which must still run before it is written."""

import pytest
import torch
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
                          GptOssConfig, GptOssForCausalLM, GraniteMoeConfig, GraniteMoeForCausalLM, Llama4ForCausalLM,
                          Llama4TextConfig, MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,
                          Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

from builders import remove_experts
from oracle import active_params, check_family, count
from prunescope.compare import compare
from prunescope.pipeline import analyse_path
from prunescope.schema import comparison_to_dict, structure_from_dict, structure_to_dict

TINY = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, vocab_size=64,
            intermediate_size=48)
MHA = {**TINY, "num_key_value_heads": 4}  # DeepSeek's latent attention gives every head its k and v
TOKENS = torch.tensor([[1, 2, 3, 4, 5, 6]])

# name -> (build, the MoE block's attribute, the router's, shared experts' attributes, [E, out, in]?)
MOE = {
    "mixtral": (lambda: MixtralForCausalLM(MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2)),
                "mlp", "gate", (), True),
    "qwen2_moe": (lambda: Qwen2MoeForCausalLM(Qwen2MoeConfig(
        **TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40,
        mlp_only_layers=[2])), "mlp", "gate", ("shared_expert", "shared_expert_gate"), True),
    "qwen3_moe": (lambda: Qwen3MoeForCausalLM(Qwen3MoeConfig(**TINY, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                             moe_intermediate_size=24)), "mlp", "gate", (), True),
    "olmoe": (lambda: OlmoeForCausalLM(OlmoeConfig(**{**TINY, "num_key_value_heads": 4}, num_experts=4,
                                                   num_experts_per_tok=2)), "mlp", "gate", (), True),
    "deepseek_v3": (lambda: DeepseekV3ForCausalLM(DeepseekV3Config(
        **MHA, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        n_group=1, topk_group=1)), "mlp", "gate", ("shared_experts",), True),
    "granitemoe": (lambda: GraniteMoeForCausalLM(GraniteMoeConfig(**TINY, num_local_experts=4, num_experts_per_tok=2)),
                   "block_sparse_moe", "router", (), True),
    "gpt_oss": (lambda: GptOssForCausalLM(GptOssConfig(**TINY, num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                                                       layer_types=["full_attention"] * 3)), "mlp", "router", (), False),
    "llama4": (lambda: Llama4ForCausalLM(Llama4TextConfig(**TINY, intermediate_size_mlp=40, num_local_experts=4,
                                                          num_experts_per_tok=1, head_dim=8, interleave_moe_layer_step=1)),
               "feed_forward", "router", ("shared_expert",), False),
}


def runs(model) -> None:
    with torch.no_grad():
        logits = model(TOKENS, use_cache=False).logits
    assert torch.isfinite(logits).all()


def moe_family(model, name):
    """What the module says, by the schema's names: the experts are one module holding stacked
    gate_up_proj [E, 2I, h] (or [E, h, 2I]) and down_proj, plus biases in GPT-OSS."""
    _, block, router, shared, out_in = MOE[name]
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def moe(layer):
        module = getattr(layer, block)
        return module if hasattr(module, "experts") else None

    def experts_field(field):
        def value(layer):
            module = moe(layer)
            if module is None:
                return None if field in ("num_experts", "expert_intermediate_size") else {
                    "gate_proj": count(module_of(layer).gate_proj), "up_proj": count(module_of(layer).up_proj),
                    "down_proj": count(module_of(layer).down_proj),
                    "intermediate_size": module_of(layer).gate_proj.out_features}[field]
            experts = module.experts
            gate_up, down = experts.gate_up_proj, experts.down_proj
            width = gate_up.shape[1] // 2 if out_in else gate_up.shape[2] // 2
            gate_up_bias = getattr(experts, "gate_up_proj_bias", None)
            biases = gate_up_bias.numel() // 2 if gate_up_bias is not None else 0
            down_bias = getattr(experts, "down_proj_bias", None)
            return {"num_experts": gate_up.shape[0], "expert_intermediate_size": width,
                    "gate_proj": gate_up.numel() // 2 + biases, "up_proj": gate_up.numel() // 2 + biases,
                    "down_proj": down.numel() + (down_bias.numel() if down_bias is not None else 0),
                    "intermediate_size": None}[field]
        return value

    def module_of(layer):
        return getattr(layer, block)

    attention_fields = {"total": lambda layer: count(layer.self_attn), "o_proj": lambda layer: count(layer.self_attn.o_proj)}
    if not name.startswith("deepseek"):
        attention_fields.update({
            projection: (lambda layer, projection=projection: count(getattr(layer.self_attn, projection)))
            for projection in ("q_proj", "k_proj", "v_proj")})
        attention_fields["num_heads"] = lambda layer: layer.self_attn.q_proj.out_features // head_dim
        attention_fields["num_kv_heads"] = lambda layer: layer.self_attn.k_proj.out_features // head_dim
    return {
        "layers": lambda m: m.model.layers,
        "attention": attention_fields,
        "mlp": {"total": lambda layer: count(module_of(layer)),
                "router": lambda layer: count(getattr(moe(layer), router)) if moe(layer) else None,
                "experts": lambda layer: count(moe(layer).experts) if moe(layer) else None,
                "shared_experts": lambda layer: sum(count(getattr(moe(layer), attr)) for attr in shared)
                if moe(layer) else None,
                **{field: experts_field(field) for field in ("num_experts", "expert_intermediate_size", "gate_proj",
                                                              "up_proj", "down_proj", "intermediate_size")}},
        "model": {"top_k": lambda m: config.num_experts_per_tok,
                  "active_params": lambda m: active_params(m, routed(block), config.num_experts_per_tok),
                  "num_experts": lambda m: [moe(layer).experts.gate_up_proj.shape[0] if moe(layer) else 0
                                            for layer in m.model.layers]},
    }


def routed(block):
    def experts(layer):
        module = getattr(layer, block)
        if not hasattr(module, "experts"):
            return None
        return count(module.experts), module.experts.gate_up_proj.shape[0]
    return experts


def analysed(path, base=None):
    return analyse_path(str(path), base).structure


@pytest.mark.parametrize("name", MOE)
def test_moe_family_and_its_experts_pruned(tmp_path, name):
    model = MOE[name][0]().eval()
    model.save_pretrained(tmp_path / "base")  # per-expert tensors, or the family's own stacked ones
    model.save_pretrained(tmp_path / "stacked", save_original_format=False)  # the names in memory: stacked
    base = analysed(tmp_path / "base")
    for form in ("base", "stacked"):
        structure = structure_to_dict(base if form == "base" else analysed(tmp_path / form))
        check_family(structure, model, moe_family(model, name))
        assert structure["config_mismatches"] == []
        assert structure_to_dict(structure_from_dict(structure)) == structure  # the MoE fields round-trip

    moe_layers = [idx for idx, layer in enumerate(model.model.layers) if hasattr(getattr(layer, MOE[name][1]), "experts")]
    plan = {moe_layers[0]: [0, 2, 3], moe_layers[-1]: [1, 3]}  # experts 1 and 0, 2 removed
    remove_experts(model, plan, block=MOE[name][1], router_name=MOE[name][2])
    runs(model)
    model.save_pretrained(tmp_path / "pruned")
    pruned = analysed(tmp_path / "pruned")
    structure = structure_to_dict(pruned)
    check_family(structure, model, moe_family(model, name))
    key = next(key for key in ("num_local_experts", "num_experts", "n_routed_experts") if key in model.config.to_dict())
    stale = {m["field"]: m for m in structure["config_mismatches"]}[key]
    assert stale["config"] == 4 and stale["per_layer"] == {str(idx): len(kept) for idx, kept in plan.items()}

    comparison = comparison_to_dict(compare(base, pruned))
    assert comparison["removed_experts"] == {str(idx): sorted(set(range(4)) - set(plan[idx])) if idx in plan else []
                                             for idx in moe_layers}
    for layer in comparison["layers"]:
        if layer["layer_idx"] in plan:
            assert layer["experts"]["method"] == "content"
            assert layer["experts"]["kept"] == plan[layer["layer_idx"]]
    from prunescope.console import experts_line

    counts = "/".join(str(len(plan.get(idx, range(4)))) for idx in moe_layers)
    assert experts_line(pruned, compare(base, pruned)) == f"experts 4 → {counts} per layer"


def test_deepseek_latent_attention_and_dense_first_layer(tmp_path):
    model = MOE["deepseek_v3"][0]().eval()
    model.save_pretrained(tmp_path / "v3")
    structure = structure_to_dict(analysed(tmp_path / "v3"))
    config = model.config
    assert structure["head_dim"] == config.qk_nope_head_dim + config.qk_rope_head_dim
    assert "qk_nope_head_dim+qk_rope_head_dim" in structure["head_dim_source"]
    assert structure["buffers"] == [f"model.layers.{i}.mlp.gate.e_score_correction_bias" for i in (1, 2)]
    for got, layer in zip(structure["layers"], model.model.layers, strict=True):
        attention = layer.self_attn
        assert (got["attention"]["q_proj"], got["attention"]["k_proj"], got["attention"]["v_proj"]) == (None, None, None)
        heads = attention.q_b_proj.out_features // (config.qk_nope_head_dim + config.qk_rope_head_dim)
        assert got["attention"]["num_heads"] == got["attention"]["num_kv_heads"] == heads == config.num_attention_heads
        mla = got["attention"]["mla"]
        for part in ("q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj"):
            assert mla[part] == count(getattr(attention, part)), part
        assert (mla["q_lora_rank"], mla["kv_lora_rank"]) == (config.q_lora_rank, config.kv_lora_rank)
        assert (mla["qk_nope_head_dim"], mla["qk_rope_head_dim"], mla["v_head_dim"]) == \
            (config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim)
    assert "num_experts" not in structure["layers"][0]["mlp"]  # first_k_dense_replace: a plain MLP
    assert structure["num_experts"] == [0, 4, 4]
    assert structure_to_dict(structure_from_dict(structure)) == structure  # the mla objects round-trip

    lite = DeepseekV2ForCausalLM(DeepseekV2Config(
        **MHA, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
        v_head_dim=8)).eval()
    lite.save_pretrained(tmp_path / "lite")
    structure = structure_to_dict(analysed(tmp_path / "lite"))
    assert structure["total_params"] == lite.num_parameters()
    for got, layer in zip(structure["layers"], lite.model.layers, strict=True):
        assert got["attention"]["q_proj"] == count(layer.self_attn.q_proj)  # V2-Lite's plain q_proj
        assert got["attention"]["num_heads"] == lite.config.num_attention_heads
        assert got["attention"]["total"] == count(layer.self_attn)


@pytest.mark.parametrize("form", ["per_expert", "stacked"])
def test_sparsity_counts_each_expert(tmp_path, form):
    """--sparsity: each routed expert's nonzeros and N:M share, against the module's own tensors."""
    from prunescope.pipeline import ScanOptions

    model = MOE["mixtral"][0]().eval()
    experts = model.model.layers[0].mlp.experts
    with torch.no_grad():
        experts.gate_up_proj[1].zero_()  # expert 1: gate and up zeroed, down kept
        gate_up = experts.gate_up_proj[2]  # expert 2: 2:4 along the inputs
        gate_up.view(-1, 4)[:, :2] = 0
        experts.down_proj[2].view(-1, 4)[:, :2] = 0
    model.save_pretrained(tmp_path / "m", save_original_format=form == "per_expert")
    structure = structure_to_dict(analyse_path(str(tmp_path / "m"), scan=ScanOptions(device="cpu")).structure)
    mlp = structure["layers"][0]["mlp"]
    expected = [int((experts.gate_up_proj[e] != 0).sum() + (experts.down_proj[e] != 0).sum()) for e in range(4)]
    assert mlp["expert_nonzero"] == expected
    assert mlp["expert_nm"][2] == {"2:4": 1.0, "4:8": 1.0} and mlp["expert_nm"][0]["2:4"] < 1
    assert mlp["nonzero"] == sum(int((p != 0).sum()) for p in model.model.layers[0].mlp.parameters())
    assert structure_to_dict(structure_from_dict(structure)) == structure


def test_experts_changed_after_pruning_are_paired_by_position_and_said_so(tmp_path):
    model = MOE["mixtral"][0]().eval()
    model.save_pretrained(tmp_path / "base")
    remove_experts(model, {0: [0, 1, 3]})
    with torch.no_grad():  # retrained after pruning: no expert is the base's any more
        for parameter in model.model.layers[0].mlp.experts.parameters():
            parameter.add_(1.0)
    runs(model)
    model.save_pretrained(tmp_path / "pruned")
    layer = comparison_to_dict(compare(analysed(tmp_path / "base"), analysed(tmp_path / "pruned")))["layers"][0]
    assert layer["experts"]["method"] == "position" and "guess" in layer["experts"]["note"]
    assert layer["experts"]["removed"] == [3] and layer["experts"]["kept"] == [0, 1, 2]


def test_experts_of_different_widths(tmp_path):
    """Channels pruned inside single experts (a file-level operation: transformers' stacked experts cannot
    hold experts of different widths): expert_intermediate_size is a list, active_params the mean expert's."""
    from safetensors.torch import load_file, save_file

    model = MOE["mixtral"][0]().eval()
    model.save_pretrained(tmp_path / "dense")
    tensors = load_file(tmp_path / "dense" / "model.safetensors")
    prefix = "model.layers.1.block_sparse_moe.experts.2."
    kept = list(range(0, 48, 2))  # expert 2 of layer 1 keeps 24 of its 48 channels
    tensors[prefix + "w1.weight"] = tensors[prefix + "w1.weight"][kept].contiguous()
    tensors[prefix + "w3.weight"] = tensors[prefix + "w3.weight"][kept].contiguous()
    tensors[prefix + "w2.weight"] = tensors[prefix + "w2.weight"][:, kept].contiguous()
    (tmp_path / "channels").mkdir()
    save_file(tensors, str(tmp_path / "channels" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "channels" / "config.json").write_text((tmp_path / "dense" / "config.json").read_text())
    structure = structure_to_dict(analysed(tmp_path / "channels"))
    total = sum(tensor.numel() for tensor in tensors.values())
    assert structure["total_params"] == total
    mlp = structure["layers"][1]["mlp"]
    assert mlp["expert_intermediate_size"] == [48, 48, 24, 48]
    experts = sum(tensor.numel() for name, tensor in tensors.items() if ".layers.1.block_sparse_moe.experts." in name)
    assert mlp["experts"] == experts
    per_layer = [sum(t.numel() for n, t in tensors.items() if f".layers.{i}.block_sparse_moe.experts." in n)
                 for i in range(3)]
    assert structure["active_params"] == total + sum(round(2 * e / 4) - e for e in per_layer)
    assert any("mean expert" in note and "[1]" in note for note in structure["notes"])


def test_deepseek_v3_hub_multi_token_prediction_layer(tmp_path):
    """DeepSeek-V3's Hub files hold one more layer after the stack, the MTP module (enorm, hnorm, eh_proj,
    shared_head beside a full decoder layer): counted, noted, and not a stale num_hidden_layers."""
    from safetensors.torch import load_file, save_file

    model = MOE["deepseek_v3"][0]().eval()
    model.save_pretrained(tmp_path / "v3")
    tensors = load_file(tmp_path / "v3" / "model.safetensors")
    hidden = model.config.hidden_size
    mtp = {name.replace("layers.2.", "layers.3."): tensor.clone() for name, tensor in tensors.items() if ".layers.2." in name}
    mtp.update({"model.layers.3.enorm.weight": torch.ones(hidden), "model.layers.3.hnorm.weight": torch.ones(hidden),
                "model.layers.3.eh_proj.weight": torch.zeros(hidden, 2 * hidden),
                "model.layers.3.shared_head.norm.weight": torch.ones(hidden)})
    (tmp_path / "hub").mkdir()
    save_file({**tensors, **mtp}, str(tmp_path / "hub" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "hub" / "config.json").write_text((tmp_path / "v3" / "config.json").read_text())
    structure = structure_to_dict(analysed(tmp_path / "hub"))
    buffers = [name for name in {**tensors, **mtp} if name.endswith("e_score_correction_bias")]
    assert structure["total_params"] == model.num_parameters() + sum(
        tensor.numel() for name, tensor in mtp.items() if name not in buffers)
    assert sorted(structure["buffers"]) == sorted(buffers)
    assert not [m for m in structure["config_mismatches"] if m["field"] == "num_hidden_layers"]
    assert any("multi-token-prediction" in note and "[3]" in note for note in structure["notes"])


def test_torch_saved_state_dicts_of_moe_models(tmp_path):
    """torch.save(model.state_dict()) (what many expert-pruning scripts write): stacked experts as in
    memory, read through the torch archive reader, with and without a base config; --sparsity reads them."""
    from prunescope.pipeline import ScanOptions

    model = MOE["qwen2_moe"][0]().eval()
    remove_experts(model, {0: [1, 2, 3]})
    runs(model)
    torch.save(model.state_dict(), tmp_path / "pruned_model.bin")
    for base_config in (model.config.to_dict(), None):
        structure = structure_to_dict(analyse_path(str(tmp_path / "pruned_model.bin"), base_config,
                                                   scan=ScanOptions(device="cpu")).structure)
        assert structure["total_params"] == model.num_parameters()
        assert structure["num_experts"] == [3, 4, 0]
        assert structure["layers"][0]["mlp"]["experts"] == count(model.model.layers[0].mlp.experts)
        assert len(structure["layers"][0]["mlp"]["expert_nonzero"]) == 3
