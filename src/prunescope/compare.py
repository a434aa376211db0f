"""Stage 5: compare a pruned model's structure with its base model's."""

from __future__ import annotations


from .interpret.structure import LayerStructure, ModelStructure
from .records import Record
from .tensors import DTYPE_SIZES

ATTENTION_FIELDS = ("total", "q_proj", "k_proj", "v_proj", "o_proj", "num_heads", "num_kv_heads")
MLP_FIELDS = ("total", "gate_proj", "up_proj", "down_proj", "intermediate_size")
MOE_FIELDS = ("num_experts", "router", "experts", "shared_experts")  # compared where either layer has experts


class Change(Record):
    original: int | None
    pruned: int | None

    @property
    def reduced(self) -> int | None:
        if self.original is None or self.pruned is None:
            return None
        return self.original - self.pruned

    @property
    def reduction_ratio(self) -> float | None:
        if self.reduced is None:
            return None
        if not self.original:
            return 0.0 if not self.pruned else None  # a part the base did not have: no ratio to give
        return self.reduced / self.original


class LayerComparison(Record):
    layer_idx: int
    original_layer_idx: int | None
    total: Change
    attention: dict[str, Change]
    mlp: dict[str, Change]
    norm: Change
    shortcut: Change  # SliceGPT's rotations: where parameters went when the projections shrank
    is_zero_layer: bool | None
    nonzero: dict[str, Change] | None = None  # "total", "attention", "mlp": when both were scanned
    experts: "ExpertMatching | None" = None  # MoE layers: which of the base layer's experts are left
    compute: dict[str, Change] | None = None  # "prefill_flops", "decode_flops", "kv_cache_bytes_per_token"


class ExpertMatching(Record):
    """Which routed experts of a base layer a pruned layer kept."""

    original: int
    pruned: int
    kept: tuple[int | None, ...]  # per pruned expert, the base expert it is (None: no match)
    removed: tuple[int, ...]  # base experts no pruned expert is
    method: str  # "content" (fingerprints) or "position" (a guess)
    note: str


class LayerMatching(Record):
    method: str  # "index", "layer_idx" or "content"
    note: str
    removed_original_layers: tuple[int, ...] = ()  # base layers no pruned layer is paired with


class Comparison(Record):
    original_name: str
    pruned_name: str
    total_params: Change
    layer_params: Change
    embedding_params: Change
    lm_head_params: Change
    num_layers: Change
    layers: tuple[LayerComparison, ...]
    layer_matching: LayerMatching
    nonzero_params: Change | None = None  # when both models' contents were scanned
    warnings: tuple[str, ...] = ()  # reasons to doubt that this base is the model's base
    # Bytes of tensor data: what pruning and quantization save together (when either model is quantized).
    stored_bytes: Change | None = None
    active_params: Change | None = None  # MoE models: parameters a token meets

    @property
    def removed_experts(self) -> dict[int, tuple[int, ...]]:
        """Pruned layer -> the base experts it lost (MoE layers only)."""
        return {layer.layer_idx: layer.experts.removed for layer in self.layers if layer.experts is not None}
    # FLOPs and KV bytes kept (same options on both sides): COMPUTE_FIELDS; None when either lacks the figures.
    compute: dict[str, Change] | None = None
    compute_notes: tuple[str, ...] = ()


def compare(base: ModelStructure, pruned: ModelStructure) -> Comparison:
    pairs, matching = match_layers(base.layers, pruned.layers)
    comparison = Comparison(
        original_name=base.model_name,
        pruned_name=pruned.model_name,
        total_params=Change(base.total_params, pruned.total_params),
        layer_params=Change(base.total_layer_params, pruned.total_layer_params),
        embedding_params=Change(base.embedding_params, pruned.embedding_params),
        lm_head_params=Change(base.lm_head_params, pruned.lm_head_params),
        num_layers=Change(base.num_layers, pruned.num_layers),
        layers=tuple(_compare_layer(original, layer) for original, layer in pairs),
        layer_matching=matching,
        nonzero_params=Change(base.contents.nonzero_params, pruned.contents.nonzero_params)
        if base.contents is not None and pruned.contents is not None else None,
        warnings=_doubts(base, pruned),
        stored_bytes=Change(stored_bytes(base), stored_bytes(pruned))
        if base.quantization is not None or pruned.quantization is not None else None,
        active_params=Change(base.active_params, pruned.active_params)
        if base.num_experts is not None or pruned.num_experts is not None else None,
        compute=_compute_changes(base, pruned),
        compute_notes=_compute_notes(base, pruned),
    )
    return compare_layer_compute(comparison, base, pruned)


def _compute_changes(base: ModelStructure, pruned: ModelStructure) -> dict[str, Change] | None:
    if base.compute is None or pruned.compute is None:
        return None
    return {name: Change(getattr(base.compute, name), getattr(pruned.compute, name))
            for name in COMPUTE_FIELDS}


COMPUTE_FIELDS = ("prefill_flops", "decode_flops", "kv_cache_bytes_per_token", "kv_cache_bytes", "weight_bytes",
                  "memory_bytes")


def _compute_notes(base: ModelStructure, pruned: ModelStructure) -> tuple[str, ...]:
    """Why FLOPs kept and parameters kept differ where a reader would expect them to agree."""
    if base.compute is None or pruned.compute is None:
        return ()
    notes = []
    if base.compute.options != pruned.compute.options:
        notes.append("the base's figures were computed with other options: FLOPs are not comparable")
    zeros = pruned.contents is not None and pruned.contents.nonzero_params < pruned.total_params
    if zeros and pruned.compute.prefill_flops >= base.compute.prefill_flops:
        kind = f"{pruned.contents.nm_sparsity} sparse" if pruned.contents.nm_sparsity else "zeroed in place"
        notes.append(f"weights {kind}: dense FLOPs are unchanged; the savings need sparse kernels")
    elif pruned.compute.prefill_flops >= base.compute.prefill_flops and pruned.total_params < base.total_params:
        notes.append("fewer parameters but no fewer FLOPs (embeddings and other tensors cost no FLOPs)")
    return tuple(notes)


def stored_bytes(structure: ModelStructure) -> int:
    """Tensor data bytes in a quantized model's files; a dense model's parameter bytes."""
    if structure.quantization is not None:
        return structure.quantization.storage_bytes
    return sum(count * DTYPE_SIZES.get(dtype, 0) for dtype, count in structure.dtypes.items())


def _doubts(base: ModelStructure, pruned: ModelStructure) -> tuple[str, ...]:
    """A comparison with the wrong base still gives numbers; say when the two do not look related."""
    doubts = []
    if base.family != pruned.family and "unknown" not in (base.family, pruned.family):
        doubts.append(f"the base is a {base.family} model, this one a {pruned.family} model")
    if pruned.slicing is None and None not in (base.hidden_size, pruned.hidden_size) \
            and base.hidden_size != pruned.hidden_size:
        doubts.append(f"hidden size {pruned.hidden_size} differs from the base's {base.hidden_size}")
    if None not in (base.vocab_size, pruned.vocab_size) and base.vocab_size != pruned.vocab_size:
        doubts.append(f"vocabulary {pruned.vocab_size} differs from the base's {base.vocab_size}")
    return tuple(doubts)


def match_layers(base_layers, pruned_layers):
    """Pair each pruned layer with the base layer it came from, and say how that was decided.

    Layers a depth-pruning method kept verbatim have the base layer's content fingerprint; those
    anchor the pairing. Without fingerprints, pairing falls back to index numbers or positions.
    """
    base_by_idx = {layer.layer_idx: layer for layer in base_layers}
    if len(base_layers) == len(pruned_layers):
        pairs = list(zip(base_layers, pruned_layers))
        return pairs, LayerMatching("index", "same number of layers: layer i paired with layer i")
    by_content = _match_by_content(base_layers, pruned_layers)
    if by_content is not None:
        return by_content
    pruned_indices = [layer.layer_idx for layer in pruned_layers]
    contiguous = pruned_indices == list(range(len(pruned_indices)))
    if not contiguous and all(idx in base_by_idx for idx in pruned_indices):
        kept = set(pruned_indices)
        removed = tuple(layer.layer_idx for layer in base_layers if layer.layer_idx not in kept)
        return ([(base_by_idx[idx], layer) for idx, layer in zip(pruned_indices, pruned_layers)],
                LayerMatching("layer_idx", "layers kept their original indices: paired by index number", removed))
    pairs = [(base_by_idx.get(layer.layer_idx), layer) for layer in pruned_layers]
    unpaired = tuple(layer.layer_idx for layer in base_layers if layer.layer_idx not in set(pruned_indices))
    return pairs, LayerMatching(
        "index",
        f"layer counts differ ({len(base_layers)} vs {len(pruned_layers)}) and no layer's content matches the "
        "base's (changed weights or dtype): paired by position, which is a guess", unpaired)


def _match_by_content(base_layers, pruned_layers):
    """Monotonic matching on fingerprints; None when no layer matches."""
    anchors: dict[int, int] = {}  # pruned position -> base position
    next_base = 0
    for position, layer in enumerate(pruned_layers):
        if layer.fingerprint is None:
            return None
        for base_position in range(next_base, len(base_layers)):
            if base_layers[base_position].fingerprint == layer.fingerprint:
                anchors[position] = base_position
                next_base = base_position + 1
                break
    if not anchors:
        return None
    pairs, guessed, used = [], [], set(anchors.values())
    for position, layer in enumerate(pruned_layers):
        if position in anchors:
            pairs.append((base_layers[anchors[position]], layer))
            continue
        # Changed content (e.g. LaCo's merged layers): the first unused base layer after the last anchor.
        low = max((anchors[p] for p in anchors if p < position), default=-1)
        candidate = next((b for b in range(low + 1, len(base_layers)) if b not in used), None)
        if candidate is not None:
            used.add(candidate)
        pairs.append((base_layers[candidate] if candidate is not None else None, layer))
        guessed.append(layer.layer_idx)
    removed = tuple(layer.layer_idx for b, layer in enumerate(base_layers) if b not in used)
    note = f"{len(anchors)} of {len(pruned_layers)} layers matched base layers by content"
    if guessed:
        note += f"; layers {guessed} changed and were paired by position between the matched ones"
    else:
        note += f"; removed base layers: {list(removed)}"
    return pairs, LayerMatching("content", note, removed)


def _compare_layer(original: LayerStructure | None, layer: LayerStructure) -> LayerComparison:
    def pick(structure, name):
        return getattr(structure, name) if structure is not None else None

    base_attention = pick(original, "attention")
    base_mlp = pick(original, "mlp")
    return LayerComparison(
        layer_idx=layer.layer_idx,
        original_layer_idx=pick(original, "layer_idx"),
        total=Change(pick(original, "total"), layer.total),
        attention={name: Change(pick(base_attention, name), getattr(layer.attention, name)) for name in ATTENTION_FIELDS},
        mlp={name: Change(pick(base_mlp, name), getattr(layer.mlp, name))
             for name in MLP_FIELDS + (MOE_FIELDS if layer.mlp.num_experts or pick(base_mlp, "num_experts") else ())},
        norm=Change(pick(original, "norm"), layer.norm),
        shortcut=Change(pick(original, "shortcut"), layer.shortcut),
        is_zero_layer=layer.is_zero_layer,
        nonzero=_nonzero_changes(pick(original, "contents"), layer.contents),
        experts=match_experts(original, layer),
    )


def match_experts(original: LayerStructure | None, layer: LayerStructure) -> ExpertMatching | None:
    """Name the base experts a layer lost. Experts kept verbatim have the base expert's content
    fingerprint (whatever number they were given when the rest were removed); without any match the
    pairing is by position, which is a guess."""
    if original is None or not (original.mlp.num_experts or layer.mlp.num_experts):
        return None
    base_count, count = original.mlp.num_experts or 0, layer.mlp.num_experts or 0
    base_prints, prints = original.expert_fingerprints, layer.expert_fingerprints
    kept: list[int | None] = []
    if len(base_prints) == base_count and len(prints) == count:
        unused = list(range(base_count))
        for fingerprint in prints:
            match = next((expert for expert in unused if base_prints[expert] == fingerprint), None)
            if match is not None:
                unused.remove(match)
            kept.append(match)
    if any(expert is not None for expert in kept):
        removed = tuple(expert for expert in range(base_count) if expert not in kept)
        changed = [position for position, expert in enumerate(kept) if expert is None]
        note = f"{count - len(changed)} of {count} experts matched base experts by content"
        if changed:
            note += f"; experts {changed} changed (not matched)"
        return ExpertMatching(base_count, count, tuple(kept), removed, "content", note)
    kept = [expert if expert < base_count else None for expert in range(count)]
    removed = tuple(range(count, base_count))
    return ExpertMatching(base_count, count, tuple(kept), removed, "position",
                          "no expert's content matches the base's (changed weights, or not measured): "
                          "paired by position, which is a guess")
LAYER_COMPUTE_FIELDS = ("prefill_flops", "decode_flops", "kv_cache_bytes_per_token", "prefill_attention_projections",
                        "prefill_attention_core", "prefill_mlp", "prefill_shortcut")


def compare_layer_compute(comparison: Comparison, base: ModelStructure, pruned: ModelStructure) -> Comparison:
    """Each compared layer's FLOPs and KV bytes against the base layer it was paired with."""
    if base.compute is None or pruned.compute is None:
        return comparison
    base_by_idx = {layer.layer_idx: figures for layer, figures in zip(base.layers, base.compute.layers)}
    figures_by_idx = {layer.layer_idx: figures for layer, figures in zip(pruned.layers, pruned.compute.layers)}
    layers = []
    for layer in comparison.layers:
        original, figures = base_by_idx.get(layer.original_layer_idx), figures_by_idx[layer.layer_idx]
        layers.append(layer.replace(compute={
            name: Change(getattr(original, name) if original is not None else None, getattr(figures, name))
            for name in LAYER_COMPUTE_FIELDS}))
    return comparison.replace(layers=tuple(layers))


def _nonzero_changes(original, pruned) -> dict[str, Change] | None:
    if pruned is None or original is None:
        return None
    return {"total": Change(original.nonzero, pruned.nonzero),
            "attention": Change(original.attention_nonzero, pruned.attention_nonzero),
            "mlp": Change(original.mlp_nonzero, pruned.mlp_nonzero)}
