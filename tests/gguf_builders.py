"""GGUF files of tiny transformers models, written the way llama.cpp's convert_hf_to_gguf.py writes them:
every tensor's GGUF name comes from gguf-py's own table (`get_tensor_name_map(arch, n_blocks).get_name`),
never from prunescope's; the layout changes the converter makes are made here too (GPT-2's Conv1D
transposed, Bloom's and GPT-NeoX's per-head q/k/v and Falcon's per-KV-group q/k/v reordered into
[q | k | v], experts stacked into [E, out, in] tensors, Phi-3's qkv_proj and gate_up_proj kept fused),
and the header keys are the ones its set_gguf_parameters writes (conversion/<family>.py in llama.cpp).

A pruned model's per-layer sizes are written as per-layer arrays (head_count [...]), as llama.cpp reads them.
"""

from __future__ import annotations

import torch


class Converted:
    """What convert_hf_to_gguf.py would write: the architecture, tensors by their transformers names
    (already in llama.cpp's layout), tensors by their GGUF names (computed ones such as rope factors), and
    header keys as GGUFWriter calls (method name -> value)."""

    def __init__(self, arch: str, tensors: dict, header: dict, gguf_tensors: dict | None = None):
        self.arch, self.tensors, self.header, self.gguf_tensors = arch, tensors, header, gguf_tensors or {}


def write(converted: Converted, path, n_blocks: int, quantized: bool = False) -> None:
    """With `quantized`, every matrix whose rows are whole Q8_0 blocks (32 values) is written Q8_0 by
    gguf-py's own quantizer, as `llama-quantize` would leave it."""
    import gguf

    arch = getattr(gguf.MODEL_ARCH, converted.arch)
    names = gguf.get_tensor_name_map(arch, n_blocks)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(n_blocks)
    for method, value in converted.header.items():
        getattr(writer, method)(value)
    tensors = {}
    for hf_name, tensor in converted.tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"{hf_name}: llama.cpp's {converted.arch} has no tensor for it"
        tensors[name] = tensor
    tensors.update(converted.gguf_tensors)
    for name, tensor in tensors.items():
        values = tensor.detach().to(torch.float32).contiguous().numpy()
        if quantized and values.ndim >= 2 and values.shape[-1] % 32 == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def parameters(model) -> dict:
    """Every parameter once, by its transformers name (a tied head is not repeated)."""
    return dict(model.named_parameters())


def per_layer(values: list[int]):
    """One size for every layer when they are all alike (what the converter writes), else the array."""
    return values[0] if len(set(values)) == 1 else values


def head_keys(heads: list[int], head_dim: int) -> dict:
    """key_length/value_length where heads differ per layer: llama.cpp otherwise takes the head size from
    embedding_length / the first layer's head_count (what prunescope's own export writes too)."""
    return {} if len(set(heads)) == 1 else {"add_key_length": head_dim, "add_value_length": head_dim}


def regrouped(tensor: torch.Tensor, groups: int, parts: list[int], head_dim: int) -> torch.Tensor:
    """Rows stored as `groups` repeats of [part_0 heads, part_1 heads, ...] (each head `head_dim` rows)
    rearranged into [all part_0 | all part_1 | ...], as the converter does for Bloom, GPT-NeoX and Falcon."""
    rows = tensor.view(groups, sum(parts), head_dim, *tensor.shape[1:])
    starts = [sum(parts[:index]) for index in range(len(parts))]
    return torch.cat([rows[:, start:start + size].reshape(-1, *tensor.shape[1:])
                      for start, size in zip(starts, parts)])


# -- one function per architecture: the transformers model -> what the converter writes --------------


def gpt2(model) -> Converted:
    """conversion/gpt2.py: Conv1D weights transposed; feed_forward_length 4 * n_embd whatever n_inner says."""
    config = model.config
    tensors = {name: (tensor.T if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else tensor)
               for name, tensor in parameters(model).items()}
    heads = [layer.attn.c_attn.weight.shape[1] // 3 // (config.n_embd // config.n_head) for layer in model.transformer.h]
    return Converted("GPT2", tensors, {"add_context_length": config.n_positions,
                                        "add_embedding_length": config.n_embd,
                                        "add_feed_forward_length": 4 * config.n_embd,
                                        "add_head_count": per_layer(heads),
                                        "add_layer_norm_eps": config.layer_norm_epsilon,
                                        **head_keys(heads, config.n_embd // config.n_head)})


def falcon(model) -> Converted:
    """conversion/falcon.py: query_key_value's KV groups [q x G, k, v] reordered to [q | k | v] (the
    "jploski" layout); a multi-query model is one group."""
    config = model.config
    tensors = parameters(model)
    heads, kv_heads = [], []
    for index, layer in enumerate(model.transformer.h):
        attention = layer.self_attention
        kv = attention.num_kv_heads if attention.new_decoder_architecture else 1
        heads.append(attention.num_heads)
        kv_heads.append(kv)
        for suffix in ("weight", "bias"):
            name = f"transformer.h.{index}.self_attention.query_key_value.{suffix}"
            if name in tensors:
                tensors[name] = regrouped(tensors[name], kv, [attention.num_heads // kv, 1, 1], attention.head_dim)
    return Converted("FALCON", tensors, {"add_context_length": 2048, "add_tensor_data_layout": "jploski",
                                         "add_embedding_length": config.hidden_size,
                                         "add_feed_forward_length": 4 * config.hidden_size,
                                         "add_head_count": per_layer(heads), "add_head_count_kv": per_layer(kv_heads),
                                         "add_layer_norm_eps": config.layer_norm_epsilon,
                                         **head_keys(heads, config.hidden_size // config.num_attention_heads)})


def bloom(model) -> Converted:
    """conversion/bloom.py: names without `transformer.`; query_key_value [q_h, k_h, v_h] per head
    reordered to [q | k | v]."""
    config = model.config
    tensors = {}
    for name, tensor in parameters(model).items():
        if ".query_key_value." in name:
            tensor = regrouped(tensor, config.n_head, [1, 1, 1], config.hidden_size // config.n_head)
        tensors[name.removeprefix("transformer.")] = tensor
    return Converted("BLOOM", tensors, {"add_context_length": config.hidden_size,
                                        "add_embedding_length": config.hidden_size,
                                        "add_feed_forward_length": 4 * config.hidden_size,
                                        "add_head_count": config.n_head, "add_head_count_kv": config.n_head,
                                        "add_layer_norm_eps": config.layer_norm_epsilon})


def gpt_neox(model) -> Converted:
    """conversion/gpt_neox.py: query_key_value [q_h, k_h, v_h] per head reordered to [q | k | v]."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    tensors = {name: regrouped(tensor, config.num_attention_heads, [1, 1, 1], head_dim)
               if ".query_key_value." in name else tensor for name, tensor in parameters(model).items()}
    return Converted("GPTNEOX", tensors, {"add_context_length": config.max_position_embeddings,
                                          "add_embedding_length": config.hidden_size,
                                          "add_feed_forward_length": config.intermediate_size,
                                          "add_rope_dimension_count": int(config.rope_parameters.get("partial_rotary_factor", 1.0)
                                                                          * head_dim),
                                          "add_head_count": config.num_attention_heads,
                                          "add_parallel_residual": config.use_parallel_residual,
                                          "add_layer_norm_eps": config.layer_norm_eps})


def phi2(model, fused_qkv: bool = False) -> Converted:
    """conversion/phi.py Phi2Model: feed_forward_length 4 * n_embd, head_count_kv = head_count. With
    `fused_qkv`, q/k/v as microsoft/phi-2's first checkpoints stored them, one mixer.Wqkv (attn_qkv)."""
    config = model.config
    tensors = parameters(model)
    for index in range(config.num_hidden_layers) if fused_qkv else ():
        for suffix in ("weight", "bias"):
            parts = [tensors.pop(f"model.layers.{index}.self_attn.{part}_proj.{suffix}") for part in "qkv"]
            tensors[f"transformer.h.{index}.mixer.Wqkv.{suffix}"] = torch.cat(parts)
    return Converted("PHI2", tensors, {"add_context_length": config.max_position_embeddings,
                                                 "add_embedding_length": config.hidden_size,
                                                 "add_feed_forward_length": 4 * config.hidden_size,
                                                 "add_head_count": config.num_attention_heads,
                                                 "add_head_count_kv": config.num_attention_heads,
                                                 "add_layer_norm_eps": config.layer_norm_eps})


def phi3(model) -> Converted:
    """conversion/phi.py Phi3MiniModel: qkv_proj and gate_up_proj as they are (attn_qkv, ffn_up with 2 x
    n_ff rows); LongRoPE's factors from the config as rope_factors_long/short tensors."""
    config = model.config
    rope = config.rope_parameters
    extra = {}
    if rope.get("long_factor"):
        extra = {"rope_factors_long.weight": torch.tensor(rope["long_factor"]),
                 "rope_factors_short.weight": torch.tensor(rope["short_factor"])}
    return Converted("PHI3", parameters(model), {"add_context_length": config.max_position_embeddings,
                                                 "add_embedding_length": config.hidden_size,
                                                 "add_feed_forward_length": config.intermediate_size,
                                                 "add_head_count": config.num_attention_heads,
                                                 "add_head_count_kv": config.num_key_value_heads,
                                                 "add_layer_norm_rms_eps": config.rms_norm_eps}, extra)


def llama_like(arch: str):
    """TextModel.set_gguf_parameters (Qwen2, Gemma-2, ...): key_length/value_length when the config
    sets head_dim."""
    def convert(model) -> Converted:
        config = model.config
        header = {"add_context_length": config.max_position_embeddings,
                  "add_embedding_length": config.hidden_size, "add_feed_forward_length": config.intermediate_size,
                  "add_head_count": config.num_attention_heads, "add_head_count_kv": config.num_key_value_heads,
                  "add_layer_norm_rms_eps": config.rms_norm_eps}
        if getattr(config, "head_dim", None):
            header.update(add_key_length=config.head_dim, add_value_length=config.head_dim)
        return Converted(arch, parameters(model), header)
    return convert


def mixtral(model, per_expert: bool = False) -> Converted:
    """conversion/llama.py (arch llama): each layer's experts w1 (gate), w3 (up), w2 (down) stacked into
    [E, out, in]; transformers holds them stacked already (gate_up_proj [E, 2I, h], gate rows first). With
    `per_expert`, as the first Mixtral conversions wrote them: blk.N.ffn_gate.<e> etc., one per expert
    (llama.cpp's LLM_TENSOR_FFN_GATE_EXP, which it still loads; gguf-py no longer names them)."""
    config = model.config
    tensors, per_expert_tensors = {}, {}
    for name, tensor in parameters(model).items():
        layer = name.split(".mlp.")[0]
        index = layer.rsplit(".", 1)[-1]
        if name.endswith("mlp.experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            tensors[f"{layer}.block_sparse_moe.experts.w1.weight"] = gate
            tensors[f"{layer}.block_sparse_moe.experts.w3.weight"] = up
            for expert in range(gate.shape[0]) if per_expert else ():
                per_expert_tensors[f"blk.{index}.ffn_gate.{expert}.weight"] = gate[expert]
                per_expert_tensors[f"blk.{index}.ffn_up.{expert}.weight"] = up[expert]
        elif name.endswith("mlp.experts.down_proj"):
            tensors[f"{layer}.block_sparse_moe.experts.w2.weight"] = tensor
            for expert in range(tensor.shape[0]) if per_expert else ():
                per_expert_tensors[f"blk.{index}.ffn_down.{expert}.weight"] = tensor[expert]
        elif name.endswith("mlp.gate.weight"):
            tensors[f"{layer}.block_sparse_moe.gate.weight"] = tensor
        else:
            tensors[name] = tensor
    if per_expert:
        tensors = {name: tensor for name, tensor in tensors.items() if ".experts." not in name}
    header = llama_like("LLAMA")(model).header
    header.update(add_expert_count=config.num_local_experts, add_expert_used_count=config.num_experts_per_tok)
    return Converted("LLAMA", tensors, header, per_expert_tensors)


def _stacked_experts(name: str, tensor, tensors: dict) -> bool:
    """transformers' stacked mlp.experts.gate_up_proj / down_proj as the converters name them before
    mapping (gate_proj.weight, up_proj.weight, down_proj.weight, each [experts, out, in]); False for other
    tensors."""
    if name.endswith("mlp.experts.gate_up_proj"):
        gate, up = tensor.chunk(2, dim=1)
        tensors[name.replace("gate_up_proj", "gate_proj.weight")] = gate
        tensors[name.replace("gate_up_proj", "up_proj.weight")] = up
        return True
    if name.endswith("mlp.experts.down_proj"):
        tensors[name + ".weight"] = tensor
        return True
    return False


def qwen2_moe(model) -> Converted:
    """conversion/qwen.py Qwen2MoeModel: experts stacked as mlp.experts.{gate,up,down}_proj; the shared
    expert and its gate as they are; expert and shared-expert widths in their own keys."""
    config = model.config
    tensors = {}
    for name, tensor in parameters(model).items():
        if not _stacked_experts(name, tensor, tensors):
            tensors[name] = tensor
    header = llama_like("QWEN2MOE")(model).header
    header.update(add_expert_count=config.num_experts, add_expert_used_count=config.num_experts_per_tok,
                  add_expert_feed_forward_length=config.moe_intermediate_size,
                  add_expert_shared_feed_forward_length=config.shared_expert_intermediate_size)
    return Converted("QWEN2MOE", tensors, header)


def deepseek2(model, split_kv_b: bool = True) -> Converted:
    """conversion/deepseek.py DeepseekV2Model (DeepSeek-V2 and V3): experts stacked, the router's
    e_score_correction_bias (a buffer) as exp_probs_b, head_count_kv 1 (MLA run as MQA). Current
    conversions split kv_b_proj per head into k_b (transposed) and v_b and write key_length for the latent
    (kv_lora_rank + rope), key_length_mla for a head (nope + rope); with `split_kv_b` False, as older
    conversions did: kv_b_proj whole, key_length nope + rope, head_count_kv the config's."""
    config = model.config
    nope, rope, v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
    tensors = {}
    for name, tensor in parameters(model).items():
        if _stacked_experts(name, tensor, tensors):
            continue
        if split_kv_b and name.endswith("kv_b_proj.weight"):
            kv_b = tensor.view(config.num_attention_heads, nope + v_dim, tensor.shape[-1])
            k_b, v_b = torch.split(kv_b, [nope, v_dim], dim=1)
            tensors[name.replace("kv_b_proj", "k_b_proj")] = k_b.transpose(1, 2)
            tensors[name.replace("kv_b_proj", "v_b_proj")] = v_b
        else:
            tensors[name] = tensor
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            tensors[name.replace("e_score_correction_bias", "e_score_correction.bias")] = buffer
    header = {"add_context_length": config.max_position_embeddings, "add_embedding_length": config.hidden_size,
              "add_feed_forward_length": config.intermediate_size, "add_head_count": config.num_attention_heads,
              "add_head_count_kv": 1 if split_kv_b else config.num_key_value_heads,
              "add_layer_norm_rms_eps": config.rms_norm_eps, "add_expert_used_count": config.num_experts_per_tok,
              "add_leading_dense_block_count": config.first_k_dense_replace, "add_vocab_size": config.vocab_size,
              "add_q_lora_rank": config.q_lora_rank, "add_kv_lora_rank": config.kv_lora_rank,
              "add_expert_feed_forward_length": config.moe_intermediate_size,
              "add_expert_count": config.n_routed_experts, "add_expert_shared_count": config.n_shared_experts,
              "add_rope_dimension_count": rope}
    if split_kv_b:
        header.update(add_key_length=config.kv_lora_rank + rope, add_value_length=config.kv_lora_rank,
                      add_key_length_mla=nope + rope, add_value_length_mla=v_dim)
    else:
        header.update(add_key_length=nope + rope, add_value_length=v_dim)
    return Converted("DEEPSEEK2", tensors, header)
