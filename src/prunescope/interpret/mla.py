"""Stage 3 for multi-head latent attention (DeepSeek-V2/V3): the tensor groups' parameters, the
ranks and head widths their shapes give, and the number of heads.

q_a_proj [q_lora_rank, h], q_a_layernorm [q_lora_rank], q_b_proj [H * (nope + rope), q_lora_rank] (or
one q_proj [H * (nope + rope), h]), kv_a_proj_with_mqa [kv_lora_rank + rope, h], kv_a_layernorm
[kv_lora_rank], kv_b_proj [H * (nope + v_head_dim), kv_lora_rank]."""

from __future__ import annotations

from ..families.base import MLA_PARTS, Q


def latent_attention(placed, head_dim: int | None, q_rows: int | None) -> dict | None:
    """The `mla` object of a layer, and its heads ("num_heads"), or None when the layer has no MLA tensors.
    `head_dim` is the query/key head width (qk_nope_head_dim + qk_rope_head_dim)."""
    params: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    for rest, tensor, bucket, role, _ in placed:
        if role in MLA_PARTS:
            params[role] = params.get(role, 0) + tensor.numel
            if rest.endswith(".weight"):
                shapes[role] = tensor.shape
    if not params:
        return None
    rows = shapes["q_b_proj"][0] if "q_b_proj" in shapes else q_rows
    heads = rows // head_dim if rows and head_dim and rows % head_dim == 0 else None
    q_rank = shapes.get("q_a_proj", (None,))[0]
    kv_rank = shapes["kv_a_layernorm"][0] if "kv_a_layernorm" in shapes else \
        shapes["kv_b_proj"][1] if len(shapes.get("kv_b_proj", ())) == 2 else None
    rope = shapes["kv_a_proj_with_mqa"][0] - kv_rank if "kv_a_proj_with_mqa" in shapes and kv_rank else None
    nope = head_dim - rope if head_dim and rope is not None else None
    kv_b_rows = shapes.get("kv_b_proj", (None,))[0]
    v_head_dim = kv_b_rows // heads - nope if kv_b_rows and heads and nope is not None and kv_b_rows % heads == 0 \
        else None
    return {**params, "total": sum(params.values()), "q_lora_rank": q_rank, "kv_lora_rank": kv_rank,
            "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": v_head_dim, "num_heads": heads,
            "q": "q_a_proj/q_b_proj" if "q_b_proj" in shapes else Q}
