"""Text for people: numbers made readable, aligned tables, each model's structure_summary.txt.

The JSON files keep exact values; this module only words them.
"""

from __future__ import annotations

import functools

from .interpret.structure import ModelStructure

TYPE_CHECKING = False  # typing's flag without importing typing: `compare` loads only with --base_model
if TYPE_CHECKING:
    from .compare import Comparison


@functools.lru_cache(maxsize=1024)  # a model's layers repeat the same few counts, in every table
def human(count: int | None) -> str:
    """1234567 -> '1.23M': for people; the JSON keeps exact integers."""
    if count is None:
        return "-"
    for scale, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


def human_bytes(count: int | None) -> str:
    """1610612736 -> '1.50 GiB' (binary units, as memory is sold and reported by CUDA)."""
    if count is None:
        return "-"
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {suffix}"
    return f"{count} B"


def reduction(ratio: float | None) -> str:
    """A reduction ratio as a signed change in size: 0.224 -> '-22.4%', a larger model -> '+3.0%'."""
    if ratio is None:
        return "-"
    if abs(ratio) < 0.0005:
        return "0.0%"
    return f"{-ratio * 100:+.1f}%"


def value_range(values) -> str:
    known = [value for value in values if value is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    return str(low) if low == high else f"{low}-{high}"


def widths(layer) -> list:
    """The MLP widths of a layer: its intermediate size, or in an MoE layer its experts' widths."""
    mlp = layer.mlp
    if not mlp.num_experts:
        return [mlp.intermediate_size]
    sizes = mlp.expert_intermediate_size
    return list(sizes) if isinstance(sizes, list) else [sizes]


def experts_line(structure: ModelStructure, comparison: Comparison | None = None) -> str | None:
    """"experts 8 → 6/8/4 per layer" (MoE layers only; one number when they all agree)."""
    if structure.num_experts is None:
        return None
    counts = [count for count in structure.num_experts if count]
    per_layer = str(counts[0]) if counts and len(set(counts)) == 1 else "/".join(map(str, counts))
    base = [layer.experts.original for layer in comparison.layers if layer.experts is not None] if comparison else []
    return f"experts {value_range(base)} → {per_layer} per layer" if base else f"experts {per_layer} per layer"


def layer_table(structure: ModelStructure, comparison: Comparison | None = None) -> str:
    """One row per layer. With a comparison, which base layer each was paired with; with a content scan,
    nonzeros, sparsity, and heads / MLP channels left once those zeroed in place are discounted."""
    sliced = any(layer.shortcut for layer in structure.layers)
    moe = structure.num_experts is not None
    scanned = any(layer.contents is not None for layer in structure.layers)
    base_of = {layer.layer_idx: layer.original_layer_idx for layer in comparison.layers} if comparison else {}
    header = (("layer",) + (("base",) if comparison else ())
              + ("total", "attn", "q", "k", "v", "o", "heads", "kv", "mlp", "gate", "up", "down", "inter", "norm")
              + (("experts",) if moe else ())
              + (("shortcut",) if sliced else ()) + (("nonzero", "sparsity") if scanned else ()) + ("zero",)
              + (("MACs", "KV/token") if structure.compute is not None else ()))
    rows = [header]
    figures = structure.compute.layers if structure.compute is not None else [None] * structure.num_layers
    for layer, layer_figures in zip(structure.layers, figures):
        attention, mlp, contents = layer.attention, layer.mlp, layer.contents
        heads, kv_heads, inter = _text(attention.num_heads), _text(attention.num_kv_heads), value_range(widths(layer))
        if contents is not None:  # "3/4": heads whose weights are all zero are not counted as left
            heads = _effective(contents.effective_heads, attention.num_heads)
            kv_heads = _effective(contents.effective_kv_heads, attention.num_kv_heads)
            if not mlp.num_experts:
                inter = _effective(contents.effective_intermediate_size, mlp.intermediate_size)
        rows.append(
            (str(layer.layer_idx),) + ((_text(base_of.get(layer.layer_idx)),) if comparison else ())
            + (human(layer.total), human(attention.total), human(attention.q_proj), human(attention.k_proj),
               human(attention.v_proj), human(attention.o_proj), heads, kv_heads, human(mlp.total),
               human(mlp.gate_proj), human(mlp.up_proj), human(mlp.down_proj), inter, human(layer.norm))
            + ((_text(mlp.num_experts or None),) if moe else ())
            + ((human(layer.shortcut),) if sliced else ())
            + ((human(contents.nonzero), f"{(1 - contents.nonzero / layer.total) * 100 if layer.total else 0:.1f}%")
               if scanned and contents is not None else ("-", "-") if scanned else ())
            + ({True: "yes", False: "", None: "?"}[layer.is_zero_layer],)
            + ((human(layer_figures.prefill_flops // 2), f"{layer_figures.kv_cache_bytes_per_token} B")
               if layer_figures is not None else ()))
    return format_table(rows)


def compute_lines(figures, comparison: Comparison | None = None) -> list[str]:
    """FLOPs, KV cache and memory in a few lines, with the convention they follow."""
    options = figures.options
    prefill = figures.prefill
    head = " (LM head: last position only)" if options.last_logit else ""
    lines = [
        f"Compute (prefill S={options.seq_len}{head}, decode at context L={options.context}, batch 1):",
        f"  prefill: {human(figures.prefill_flops)} FLOPs = {human(figures.prefill_flops // 2)} MACs"
        f"  (attention projections {human(prefill.attention_projections)}, attention core "
        f"{human(prefill.attention_core)}, MLP {human(prefill.mlp)}"
        + (f", shortcuts {human(prefill.shortcut)}" if prefill.shortcut else "") + f", LM head {human(prefill.lm_head)}"
        + (f", other linears {human(prefill.other)}" if prefill.other else "") + ")",
        f"  decode:  {human(figures.decode_flops)} FLOPs = {human(figures.decode_flops // 2)} MACs per token",
        f"  KV cache: {figures.kv_cache_bytes_per_token:,} B/token ({figures.kv_dtype}); "
        f"{human_bytes(figures.kv_cache_bytes)} at batch {options.batch} x context {options.context}",
        "  weights: " + ", ".join(f"{human_bytes(size)} {dtype}" for dtype, size in figures.weight_bytes_by_dtype.items())
        + (f"; {human_bytes(figures.weight_bytes_at_dtype)} at {options.weight_dtype}" if options.weight_dtype else ""),
        f"  memory (weights + KV cache, no activations): {human_bytes(figures.memory_bytes)}",
    ]
    if options.memory is not None:
        if figures.context_unbounded:
            fits = "any context (every layer's cache is capped by its window)"
        elif figures.max_context is None:
            fits = "not even one token"
        else:
            fits = f"context {figures.max_context:,} at batch {options.batch}"
        lines.append(f"  in {human_bytes(options.memory)}: {fits}; batch {_text(figures.max_batch)} "
                     f"at context {options.context}")
    if comparison is not None and comparison.compute is not None:
        kept = lambda name: _kept(comparison.compute[name])  # noqa: E731
        lines.append(f"  kept vs {comparison.original_name}: prefill FLOPs {kept('prefill_flops')}, decode FLOPs "
                     f"{kept('decode_flops')}, KV cache {kept('kv_cache_bytes_per_token')}, parameters "
                     f"{_kept(comparison.total_params)}")
        lines += [f"  note: {note}" for note in comparison.compute_notes]
    lines += [f"  note: {note}" for note in figures.notes]
    lines.append("  (FLOPs = 2 x MACs of the matrix products, as torch's FlopCounterMode counts an eager forward; "
                 "README: Compute and memory)")
    return lines


def _kept(change) -> str:
    if change.original in (None, 0) or change.pruned is None:
        return "-"
    return f"{change.pruned / change.original * 100:.1f}%"


def _effective(left: int | None, total: int | None) -> str:
    if left is None or total is None or left == total:
        return _text(total)
    return f"{left}/{total}"


def _text(value) -> str:
    return "-" if value is None else str(value)


def format_table(rows, left=(0,)) -> str:
    """Plain aligned columns: numbers to the right, the columns in `left` (text) to the left."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(map(len, column)) for column in zip(*rows)]
    fits = [str.ljust if column in left else str.rjust for column in range(len(widths))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join([fit(cell, width) for fit, cell, width in zip(fits, row, widths)]).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def structure_summary(structure: ModelStructure, comparison: Comparison | None, kind: str,
                      findings: list[str], checkpoint_path: str) -> str:
    """structure_summary.txt: what a person wants to know about one model, in one screen."""
    layers = structure.layers
    lines = [
        f"Model: {structure.model_name}",
        f"Checkpoint: {checkpoint_path} ({kind})",
    ]
    if structure.slicing:
        lines.append(f"Slicing: {structure.slicing['summary']} "
                     f"(shortcut matrices: {structure.slicing['shortcut_params']:,} parameters)")
    lines += [
        f"Family: {structure.family}    head_dim: {_text(structure.head_dim)} ({structure.head_dim_source})",
        "",
        f"Total parameters:     {structure.total_params:,} ({human(structure.total_params)})",
        f"Embedding parameters: {structure.embedding_params:,}",
        f"LM head parameters:   {structure.lm_head_params:,}"
        + (" (tied to the embedding, counted once)" if structure.tied_embeddings else ""),
        f"Layers:               {structure.num_layers} ({structure.total_layer_params:,} parameters)",
        f"Heads per layer:      {value_range(layer.attention.num_heads for layer in layers)}"
        f"    KV heads: {value_range(layer.attention.num_kv_heads for layer in layers)}",
        f"Intermediate size:    {value_range(width for layer in layers for width in widths(layer))}"
        + (" (in MoE layers, the experts')" if structure.num_experts is not None else ""),
    ]
    if structure.quantization is not None:
        lines.append(f"Quantization:         {quantization_text(structure.quantization)}")
    if structure.num_experts is not None:
        lines.append(f"Experts:              {experts_line(structure).removeprefix('experts ')} "
                     f"(top_k {_text(structure.top_k)}); active parameters "
                     + (f"{structure.active_params:,} ({human(structure.active_params)})"
                        if structure.active_params is not None else "- (no top_k in the config)"))
    if structure.contents is not None:
        contents = structure.contents
        lines.append(f"Nonzero parameters:   {contents.nonzero_params:,} (sparsity {contents.sparsity * 100:.2f}%"
                     + (f", {contents.nm_sparsity} everywhere)" if contents.nm_sparsity else ")"))
        effective = [(layer.layer_idx, layer.contents) for layer in layers if layer.contents is not None]
        zeroed_heads = [f"{idx}: {c.effective_heads}/{layer.attention.num_heads}" for (idx, c), layer
                        in zip(effective, layers) if c.effective_heads is not None
                        and layer.attention.num_heads is not None and c.effective_heads < layer.attention.num_heads]
        if zeroed_heads:
            lines.append(f"Heads zeroed in place (layer: effective/heads): {', '.join(zeroed_heads)}")
        zeroed_channels = [f"{idx}: {c.effective_intermediate_size}/{layer.mlp.intermediate_size}"
                           for (idx, c), layer in zip(effective, layers)
                           if c.effective_intermediate_size is not None and layer.mlp.intermediate_size
                           and c.effective_intermediate_size < layer.mlp.intermediate_size]
        if zeroed_channels:
            lines.append(f"MLP channels zeroed in place (layer: effective/intermediate): {', '.join(zeroed_channels)}")
    zero = [layer.layer_idx for layer in layers if layer.is_zero_layer]
    if zero:
        lines.append(f"All-zero layers:      {zero}")
    if structure.position_embedding_params:
        lines.append(f"Position embeddings:  {structure.position_embedding_params:,}")
    if structure.other_params:
        lines.append(f"Other parameters:     {structure.other_params:,} ({', '.join(structure.other_tensors)})")
    if comparison is not None:
        total, layer_total = comparison.total_params, comparison.layer_params
        lines += [
            "",
            f"Compared with {comparison.original_name}:",
            f"  total:  {total.original:,} -> {total.pruned:,}  ({reduction(total.reduction_ratio)})",
            f"  layers: {layer_total.original:,} -> {layer_total.pruned:,}  ({reduction(layer_total.reduction_ratio)})",
            f"  layer count: {comparison.num_layers.original} -> {comparison.num_layers.pruned}"
            f"  (matched by {comparison.layer_matching.method}: {comparison.layer_matching.note})",
        ]
        if comparison.nonzero_params is not None:
            nonzero = comparison.nonzero_params
            lines.append(f"  nonzero: {nonzero.original:,} -> {nonzero.pruned:,}  ({reduction(nonzero.reduction_ratio)})")
        if comparison.stored_bytes is not None:
            stored = comparison.stored_bytes
            lines.append(f"  stored bytes: {stored.original:,} -> {stored.pruned:,}  ({reduction(stored.reduction_ratio)})")
        if comparison.active_params is not None:
            lines.append(f"  {experts_line(structure, comparison)}")
            removed = {idx: list(experts) for idx, experts in comparison.removed_experts.items() if experts}
            if removed:
                methods = {layer.experts.method for layer in comparison.layers if layer.experts is not None}
                lines.append("  removed experts (layer: base experts): "
                             + ", ".join(f"{idx}: {experts}" for idx, experts in removed.items())
                             + ("  (paired by position: a guess)" if "position" in methods else "  (matched by content)"))
        if comparison.layer_matching.removed_original_layers:
            lines.append(f"  base layers without a match: {list(comparison.layer_matching.removed_original_layers)}")
        for warning in comparison.warnings:
            lines.append(f"  ⚠ is this the right base? {warning}")
    if structure.compute is not None:
        lines += [""] + compute_lines(structure.compute, comparison)
    if structure.config_mismatches:
        lines += ["", "The config disagrees with the tensor shapes (the shapes are used):"]
        for mismatch in structure.config_mismatches:
            per_layer = mismatch.get("per_layer")
            if per_layer:
                shapes = ", ".join(f"layer {idx}: {value}" for idx, value in per_layer.items())
            else:
                shapes = str(mismatch["actual"])
            lines.append(f"  {mismatch['field']}: config {mismatch['config']}; shapes: {shapes}")
    if structure.slicing and structure.slicing["mismatches"]:
        lines += ["", "The slicing configuration disagrees with the shapes (the shapes are used):"]
        lines += [f"  {m}" for m in structure.slicing["mismatches"]]
    if structure.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in structure.notes]
    if findings:
        lines += ["", "SECURITY: the pickle references code no checkpoint needs (nothing was run):"]
        lines += [f"  {finding}" for finding in findings]
    lines += ["", layer_table(structure, comparison), ""]
    return "\n".join(lines)


def quantization_text(quantization) -> str:
    """One line: the encoding and what it costs, e.g. "compressed-tensors pack-quantized, 4 bits, group 32,
    symmetric; 4.61 bits per parameter stored (overhead 2,538 elements)"."""
    parts = [encoding_name(quantization.method, quantization.format)]
    if quantization.bits is not None:
        parts.append(f"{quantization.bits} bits")
    if quantization.group_size:
        parts.append(f"group {quantization.group_size}")
    if quantization.symmetric is not None and quantization.quantized_params:
        parts.append("symmetric" if quantization.symmetric is True else "asymmetric"
                     if quantization.symmetric is False else f"symmetric {quantization.symmetric}")
    if quantization.act_order:
        parts.append("act-order" + ("" if quantization.act_order is True else f" {quantization.act_order}"))
    if quantization.activation_scheme:
        parts.append(f"activations {quantization.activation_scheme}")
    if quantization.sparsity_format:
        parts.append(f"sparsity {quantization.sparsity_format}")
    text = ", ".join(parts)
    if quantization.bits_per_param is not None:
        text += f"; {quantization.bits_per_param:.2f} bits per parameter stored"
    return text + f" (overhead {quantization.overhead_elements:,} elements)"


def encoding_name(method: str, format_name: str) -> str:
    """"gptq" + "gptq v1" -> "gptq v1"; "compressed-tensors" + "pack-quantized" -> "pack-quantized" (its
    formats name themselves); "bitsandbytes" + "nf4" -> "bitsandbytes nf4"."""
    if method in format_name or method == "compressed-tensors":
        return format_name
    return f"{method} {format_name}"
