"""Stage 3 for Mixture-of-Experts layers: routed experts counted from their tensors' shapes, whether
stored one tensor per expert (`experts.<e>.w1`) or stacked into 3-D tensors ([E, ...]), and the
parameters a token meets (active_params).

Nothing here names a family's tensors: roles come from the family description (`families`)."""

from __future__ import annotations

from ..families.base import EXPERT_DOWN, EXPERT_GATE, EXPERT_GATE_UP, EXPERT_PARTS, EXPERT_UP, Family, expert_number
from ..records import Record


class Experts(Record):
    """A layer's routed experts, as their tensors' shapes give them."""

    count: int
    parts: dict  # GATE / UP / DOWN -> parameters summed over the routed experts
    per_expert: tuple[int, ...]  # parameters of each expert, in order
    intermediate: tuple[int | None, ...]  # each expert's intermediate width, in order
    tensors: dict  # full name -> expert number, None for stacked tensors


def routed_experts(placed, family: Family) -> Experts | None:
    """The routed experts among a layer's placed tensors ((rest, tensor, bucket, role, module), ...)."""
    per_expert: dict[int, int] = {}
    widths: dict[int, int] = {}
    parts: dict[str, int] = {}
    tensors: dict[str, int | None] = {}
    for _, tensor, bucket, role, module in placed:
        if bucket != "experts":
            continue
        number = expert_number(module)
        tensors[tensor.name] = number
        numel = tensor.numel
        shares = EXPERT_PARTS[role]
        for part in shares:
            parts[part] = parts.get(part, 0) + numel // len(shares)
        if number is not None:  # one expert's tensor: [out, in] like nn.Linear
            per_expert[number] = per_expert.get(number, 0) + numel
            if number not in widths and len(tensor.shape) == 2:  # the expert's first weight tells
                width = _width(role, tensor.shape[0], tensor.shape[1])
                if width is not None:
                    widths.setdefault(number, width)
            continue
        count = tensor.shape[0] if tensor.shape else 0
        for expert in range(count):  # stacked: [E, ...], every expert the same size
            per_expert[expert] = per_expert.get(expert, 0) + numel // count
        if len(tensor.shape) == 3:
            out, into = tensor.shape[1:] if family.stacked.out_in else tensor.shape[:0:-1]
            width = _width(role, out, into)
            for expert in range(count):
                if width is not None:
                    widths.setdefault(expert, width)
    if not tensors:
        return None
    order = sorted(per_expert)
    return Experts(count=len(order), parts=parts, per_expert=tuple(per_expert[e] for e in order),
                   intermediate=tuple(widths.get(e) for e in order), tensors=tensors)


def _width(role: str, out: int, into: int) -> int | None:
    """An expert's intermediate width from one of its weights, given as (out, in)."""
    if role in (EXPERT_GATE, EXPERT_UP):
        return out
    if role == EXPERT_GATE_UP:
        return out // 2
    if role == EXPERT_DOWN:
        return into
    return None


def active_params(structure, top_k: int | None, notes: list[str]) -> int | None:
    """Parameters one token meets: everything but the routed experts, plus top_k experts per MoE layer
    (the mean expert of the layer where its experts differ in size)."""
    moe_layers = [layer for layer in structure.layers if layer.mlp.num_experts]
    if not moe_layers or not top_k:
        return None
    active = structure.total_params
    uneven = []
    for layer in moe_layers:
        mlp = layer.mlp
        chosen = min(top_k, mlp.num_experts)
        active += round(chosen * mlp.experts / mlp.num_experts) - mlp.experts
        if isinstance(mlp.expert_intermediate_size, list) or mlp.experts % mlp.num_experts:
            uneven.append(layer.layer_idx)
    if uneven:
        notes.append(f"active_params counts the mean expert of layers {uneven}, whose experts differ in size")
    if any(layer.mlp.num_experts < top_k for layer in moe_layers):
        notes.append(f"some layers keep fewer experts than top_k {top_k}: all of theirs count as active")
    return active
