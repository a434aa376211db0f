"""Stage 3 for multi-head latent attention (DeepSeek-V2/V3): the tensor groups' parameters, the
ranks and head widths their shapes give, and the number of heads.

q_a_proj [q_lora_rank, h], q_a_layernorm [q_lora_rank], q_b_proj [H * (nope + rope), q_lora_rank] (or
one q_proj [H * (nope + rope), h]), kv_a_proj_with_mqa [kv_lora_rank + rope, h], kv_a_layernorm
[kv_lora_rank], kv_b_proj [H * (nope + v_head_dim), kv_lora_rank] (in llama.cpp's GGUF files, split per head
into k_b [H, kv_lora_rank, nope] and v_b [H, v_head_dim, kv_lora_rank]: the same elements, so both
layouts are read by their element count)."""

from __future__ import annotations

from ..families.base import MLA_PARTS, Q


def latent_attention(placed, head_dim: int | None, q_rows: int | None) -> dict | None:
    """The `mla` object of a layer, and its heads ("num_heads"), or None when the layer has no MLA tensors.
    `head_dim` is the query/key head width (qk_nope_head_dim + qk_rope_head_dim)."""
    params: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    kv_b_elements = 0  # of kv_b_proj's weights: one matrix, or GGUF's k_b and v_b
    for rest, tensor, bucket, role, _ in placed:
        if role in MLA_PARTS:
            params[role] = params.get(role, 0) + tensor.numel
            if rest.endswith(".weight"):
                shapes[role] = tensor.shape
                kv_b_elements += tensor.numel if role == "kv_b_proj" else 0
    if not params:
        return None
    rows = shapes["q_b_proj"][0] if "q_b_proj" in shapes else q_rows
    heads = rows // head_dim if rows and head_dim and rows % head_dim == 0 else None
    q_rank = shapes.get("q_a_proj", (None,))[0]
    kv_rank = shapes["kv_a_layernorm"][0] if "kv_a_layernorm" in shapes else \
        shapes["kv_b_proj"][1] if len(shapes.get("kv_b_proj", ())) == 2 else None
    rope = shapes["kv_a_proj_with_mqa"][0] - kv_rank if "kv_a_proj_with_mqa" in shapes and kv_rank else None
    nope = head_dim - rope if head_dim and rope is not None else None
    kv_b_rows = kv_b_elements // kv_rank if kv_b_elements and kv_rank and kv_b_elements % kv_rank == 0 else None
    v_head_dim = kv_b_rows // heads - nope if kv_b_rows and heads and nope is not None and kv_b_rows % heads == 0 \
        else None
    return {**params, "total": sum(params.values()), "q_lora_rank": q_rank, "kv_lora_rank": kv_rank,
            "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": v_head_dim, "num_heads": heads,
            "q": "q_a_proj/q_b_proj" if "q_b_proj" in shapes else Q,
            # (out, in) of kv_b_proj as one matrix, for the FLOPs of a split one; popped by the caller
            "kv_b_shape": (kv_b_rows, kv_rank) if kv_b_rows and kv_rank else None}
