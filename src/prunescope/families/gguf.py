"""GGUF files (llama.cpp): one table for llama.cpp's own tensor names (`blk.N.attn_q`, `blk.N.ffn_up_exps`,
...), which are the same for every architecture it runs (gguf-py's `constants.TENSOR_NAMES`; each
architecture uses a subset, `MODEL_TENSORS`); its header keys stand in for the config's. Chosen by the
file format, not by model_type (a GGUF `llama` is not a transformers `llama`).

What convert_hf_to_gguf.py does to the layouts, which this table relies on:
- every fused q/k/v becomes `attn_qkv` with rows [q heads | k heads | v heads]: GPT-2's Conv1D is
  transposed to [out, in], Bloom's and GPT-NeoX's per-head interleaving and Falcon's per-KV-group
  layout are reordered (Falcon's `tensor_data_layout` "jploski"); head_count and head_count_kv split it;
- routed experts are stacked (early Mixtral files: one `ffn_gate.<e>` per expert), [E, out, in] like nn.Linear (`ffn_gate_exps` [E, I, h], `ffn_down_exps`
  [E, h, I]), the router is `ffn_gate_inp` [E, h]; shared experts are `ffn_*_shexp`, Qwen2-MoE's
  sigmoid gate over them `ffn_gate_inp_shexp` [h];
- learned positions are `position_embd`, Bloom's embedding LayerNorm `token_embd_norm`; a tied head has
  no `output` tensor (llama.cpp reuses `token_embd`; older GPT-2 and Bloom conversions wrote a copy,
  which is then counted as a separate head);
- `rope_freqs` (Llama 3.1's RoPE scaling) and `rope_factors_long`/`rope_factors_short` (Phi-3's
  LongRoPE) are computed from the config: transformers keeps no parameter for them.
"""

from .base import (CONFIG_KEYS, DOWN, EMBEDDING, EMBEDDING_NORM, EXPERT_DOWN, EXPERT_GATE, EXPERT_GATE_UP,
                   EXPERT_UP, FINAL_NORM, GATE, GATE_UP, K, K_NORM, LM_HEAD, NORM, O, POSITIONS, Q, Q_NORM, QKV,
                   ROUTER, SHARED_EXPERT, UP, V, Family)

LAYER = {
    "attn_q": Q,
    "attn_k": K,
    "attn_v": V,
    "attn_qkv": QKV,  # gpt2, gptneox, bloom, falcon, phi2 (older files), phi3, starcoder, mpt, ...
    "attn_output": O,
    "attn_q_norm": Q_NORM,  # qwen3, gemma3, olmo2 (whole width), ...
    "attn_k_norm": K_NORM,
    # deepseek2's latent attention, by transformers' names for its parts (V2-Lite has attn_q instead of q_a/q_b)
    "attn_q_a": "q_a_proj",
    "attn_q_a_norm": "q_a_layernorm",
    "attn_q_b": "q_b_proj",
    "attn_kv_a_mqa": "kv_a_proj_with_mqa",
    "attn_kv_a_norm": "kv_a_layernorm",
    "attn_kv_b": "kv_b_proj",  # [H x (nope + v_head_dim), kv_lora_rank] (older conversions)
    "attn_k_b": "kv_b_proj",  # kv_b split per head: k_b [H, kv_lora_rank, nope] (transposed) and
    "attn_v_b": "kv_b_proj",  # v_b [H, v_head_dim, kv_lora_rank], the same elements (current conversions)
    "ffn_gate": GATE,
    "ffn_up": UP,
    "ffn_down": DOWN,
    "ffn_gate_inp": ROUTER,  # llama (Mixtral), qwen2moe, qwen3moe, olmoe, deepseek2, ...
    "ffn_gate_exps": EXPERT_GATE,
    "ffn_up_exps": EXPERT_UP,
    "ffn_down_exps": EXPERT_DOWN,
    "ffn_gate_up_exps": EXPERT_GATE_UP,  # convert_hf_to_gguf --fuse-gate-up-exps
    "ffn_gate.*": EXPERT_GATE,  # per expert (ffn_gate.<e>): Mixtral files converted before experts were stacked
    "ffn_up.*": EXPERT_UP,
    "ffn_down.*": EXPERT_DOWN,
    "ffn_gate_shexp": SHARED_EXPERT,  # qwen2moe, deepseek2, llama4
    "ffn_up_shexp": SHARED_EXPERT,
    "ffn_down_shexp": SHARED_EXPERT,
    "ffn_gate_inp_shexp": SHARED_EXPERT,  # qwen2moe's shared_expert_gate
    "attn_norm": NORM,
    "attn_norm_2": NORM,  # falcon (new decoder architecture): ln_attn; attn_norm is then ln_mlp
    "ffn_norm": NORM,
    "post_attention_norm": NORM,  # gemma2, gemma3
    "post_ffw_norm": NORM,
    "attn_post_norm": NORM,  # glm4
    "ffn_post_norm": NORM,
}

FAMILY = Family(
    name="gguf",
    # llama.cpp's architecture names that no transformers model_type shares (a GGUF `gpt2` or `falcon` is
    # read here too: the format chooses this table, these names only say the architecture is known).
    model_types={"deci": "Deci", "gptneox": "GPTNeoX", "phi2": "Phi", "qwen2moe": "Qwen2Moe", "deepseek2": "DeepseekV2"},
    layer=LAYER,
    attention="attn",
    mlp="ffn",
    separator="_",
    outside={"token_embd": EMBEDDING, "token_embd_norm": EMBEDDING_NORM, "position_embd": POSITIONS,
             "output": LM_HEAD, "output_norm": FINAL_NORM},
    # DeepSeek-V3's router bias e_score_correction_bias: a buffer in transformers
    buffers=("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight", "exp_probs_b.bias"),
    config_keys={**CONFIG_KEYS, "layers": ("block_count",), "heads": ("attention.head_count",),
                 "kv_heads": ("attention.head_count_kv",), "intermediate": ("feed_forward_length",),
                 "hidden": ("embedding_length",), "vocab": ("vocab_size",),
                 # deepseek2 converted for MLA: key_length is the latent's (kv_lora_rank + rope), key_length_mla
                 # a query/key head's (qk_nope + qk_rope); older conversions wrote the latter as key_length
                 "head_dim": ("attention.key_length_mla", "attention.key_length"),
                 "experts": ("expert_count",), "top_k": ("expert_used_count",),
                 # Mixtral (arch llama) has no expert key: its experts are feed_forward_length wide
                 "expert_intermediate": ("expert_feed_forward_length", "feed_forward_length")},
)

# Architectures whose tensor of a shared name holds something else, as llama.cpp's loader reads it
# (gguf-py keeps such exceptions apart too, in `arch_block_mappings_cfg`): chosen by the header's
# general.architecture.
BY_ARCHITECTURE = {
    # ffn_up holds gate and up, [2 x n_ff, n_embd] (llama.cpp: ffn_up {n_embd, 2 * n_ff}, no ffn_gate)
    arch: FAMILY.replace(name=f"gguf {arch}", layer={**LAYER, "ffn_up": GATE_UP})
    for arch in ("phi3", "chatglm", "glm4")
}


def family_of(architecture) -> Family:
    """The table for a GGUF file whose header names this architecture."""
    return BY_ARCHITECTURE.get(architecture, FAMILY)
