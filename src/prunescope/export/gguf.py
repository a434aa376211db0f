"""`--to gguf`: a GGUF file llama.cpp runs with every layer at its own size.

Width-pruned layers (LLM-Pruner, FLAP, torch-pruning, heads pruned inside KV groups) are written as
llama.cpp's `deci` architecture, which reads per-layer `attention.head_count`, `head_count_kv` and
`feed_forward_length` arrays and builds each layer with its own sizes; a model whose layers are all
alike is written as plain `llama` (which reads one size for all layers). q and k rows are reordered
for llama.cpp's RoPE, which rotates adjacent pairs where transformers rotates halves.

llama.cpp edge cases and the exact work-arounds written for them:
- `deci` skips the rest of a layer whose MLP is gone (feed_forward_length 0), attention output and
  residual included, and in the last layer that skip also drops the selection of the output rows
  (llama.cpp then aborts): such a layer gets one MLP channel with all-zero weights (silu(0) * 0 = 0).
- layer 0's head count gives the head size of the whole model (0 heads: a model without heads): a
  layer 0 without attention gets one query/KV head with all-zero weights (its output projection is
  zero, so it adds nothing).
"""

from __future__ import annotations

import os

import numpy as np

from ..families.base import DOWN, GATE, K, O, Q, UP, V
from ..tensors import CheckpointError
from .source import ExportSource, SourceLayer, bf16_bits, read_array, temporary_beside, tokenizer_places

GGUF_FAMILIES = ("llama", "mistral")  # transformers model types whose layout llama.cpp's llama/deci reads
ATTENTION_NORM, MLP_NORM = "input_layernorm", "post_attention_layernorm"
GGUF_NAMES = {Q: "attn_q", K: "attn_k", V: "attn_v", O: "attn_output", GATE: "ffn_gate", UP: "ffn_up", DOWN: "ffn_down"}


class GgufLayer:
    """What one layer becomes: its sizes as llama.cpp reads them, and its tensors (name, values function)."""

    def __init__(self, heads: int, kv_heads: int, feed_forward: int, tensors: list, workaround: str = ""):
        self.heads, self.kv_heads, self.feed_forward = heads, kv_heads, feed_forward
        self.tensors, self.workaround = tensors, workaround


def export_gguf(source: ExportSource, output: str, dtype: str | None = None, tokenizer: str | None = None) -> list[str]:
    import gguf  # the export extra: only this target needs it

    _check_representable(source)
    config = source.config or source.base_config or {}
    head_dim, hidden = source.structure.head_dim, source.structure.hidden_size
    layers = [_gguf_layer(source, position, layer, head_dim, hidden, position == len(source.layers) - 1)
              for position, layer in enumerate(source.layers)]
    sizes = {(layer.heads, layer.kv_heads, layer.feed_forward) for layer in layers}
    uniform = len(sizes) == 1 and 0 not in next(iter(sizes))
    arch = "llama" if uniform else "deci"
    out_dtype = dtype or _source_dtype(source)
    lines = []
    temporary = temporary_beside(output)
    writer = gguf.GGUFWriter(temporary, arch)
    try:
        writer.add_name(source.structure.model_name)
        writer.add_block_count(len(layers))
        writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
        writer.add_embedding_length(hidden)
        if uniform:
            writer.add_head_count(layers[0].heads)
            writer.add_head_count_kv(layers[0].kv_heads)
            writer.add_feed_forward_length(layers[0].feed_forward)
        else:
            writer.add_head_count([layer.heads for layer in layers])
            writer.add_head_count_kv([layer.kv_heads for layer in layers])
            writer.add_feed_forward_length([layer.feed_forward for layer in layers])
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        rope = _rope(config, source)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        factor = rope.get("factor")
        if rope["rope_type"] == "linear" and factor:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(factor))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
        writer.add_vocab_size(source.structure.vocab_size)
        writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                              "BF16": gguf.LlamaFileType.MOSTLY_BF16}[out_dtype])
        lines.append(_add_vocabulary(writer, gguf, source, tokenizer))
        tensors = _outside_tensors(source) + [tensor for layer in layers for tensor in layer.tensors]
        if rope["rope_type"] == "llama3":  # Llama 3.1+: per-frequency factors, in llama.cpp a tensor
            tensors.append(("rope_freqs.weight", (head_dim // 2,), lambda: _llama3_frequency_factors(rope, head_dim)))
        for name, shape, _ in tensors:
            numpy_type, raw_type, itemsize = _element_type(gguf, shape, out_dtype)
            writer.add_tensor_info(name, shape, numpy_type, _count(shape) * itemsize, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, shape, values in tensors:  # one tensor in memory at a time
            writer.write_tensor_data(_encoded(np.asarray(values(), np.float32).reshape(shape), out_dtype))
        writer.close()
        os.replace(temporary, output)
    except BaseException:
        writer.close()
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    notes = [f"layer {position}: {layer.workaround}" for position, layer in enumerate(layers) if layer.workaround]
    parameters = sum(_count(shape) for _, shape, _ in tensors)
    first = (f"wrote {output}: llama.cpp `{arch}`, {len(layers)} layers"
             + ("" if uniform else " with per-layer heads/KV heads/feed-forward lengths")
             + f", {out_dtype}, {parameters:,} parameters")
    return [first, *notes, *lines]


def _check_representable(source: ExportSource) -> None:
    model_type = source.config.get("model_type")
    if source.family.name != "llama" or (model_type and model_type not in GGUF_FAMILIES):
        raise CheckpointError(source.path, f"--to gguf writes Llama-layout models (llama, mistral), not "
                                           f"{model_type or source.family.name}", "use --to hf")
    for layer in source.layers:
        if layer.others or layer.structure.shortcut or layer.structure.attention.qk_norm or \
                set(layer.norms) - {ATTENTION_NORM, MLP_NORM}:
            what = (layer.others or tuple(set(layer.norms) - {ATTENTION_NORM, MLP_NORM}) or ("q/k norms or shortcuts",))[0]
            raise CheckpointError(source.path, f"layer {layer.structure.layer_idx} holds {what}, which llama.cpp's "
                                               "llama/deci layers do not have", "use --to hf")
        widths = {layer.projections[role].weight.shape[0] for role in (O, DOWN) if role in layer.projections}
        if widths - {source.structure.hidden_size}:
            raise CheckpointError(source.path, f"layer {layer.structure.layer_idx} writes a residual stream of another "
                                               "width (SliceGPT?)", "llama.cpp needs one width for all layers")
    if source.config.get("sliding_window"):
        raise CheckpointError(source.path, "sliding-window attention (mistral's sliding_window), which llama.cpp's "
                                           "llama/deci do not apply", "use --to hf")


def _rope(config: dict, source: ExportSource) -> dict:
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta") or 10000.0)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    rope["rope_type"] = kind
    if kind not in ("default", "linear", "llama3"):
        raise CheckpointError(source.path, f"RoPE scaling {kind!r} is not written by prunescope's GGUF export yet",
                              "use --to hf")
    return rope


def _llama3_frequency_factors(rope: dict, head_dim: int) -> np.ndarray:
    """What llama.cpp divides each RoPE frequency by for Llama 3.1's scaling: 1 for short wavelengths,
    `factor` for long ones, and between them the reciprocal of transformers' smooth interpolation."""
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    context = float(rope["original_max_position_embeddings"])
    frequencies = 1.0 / float(rope["rope_theta"]) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    wavelengths = 2 * np.pi / frequencies
    smooth = (context / wavelengths - low) / (high - low)
    factors = np.where(wavelengths < context / high, 1.0,
                       np.where(wavelengths > context / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _gguf_layer(source: ExportSource, position: int, layer: SourceLayer, head_dim: int, hidden: int,
                last: bool) -> GgufLayer:
    heads = layer.structure.attention.num_heads or 0
    kv_heads = layer.structure.attention.num_kv_heads or 0
    feed_forward = layer.structure.mlp.intermediate_size or 0
    if heads and (not kv_heads or heads % kv_heads):
        raise CheckpointError(source.path, f"layer {layer.structure.layer_idx}: {heads} query heads over {kv_heads} "
                              "KV heads", "llama.cpp pairs query head h with KV head h // (heads / KV heads)")
    workaround = ""
    if position == 0 and heads == 0:
        heads = kv_heads = 1
        workaround = "attention removed: one all-zero head (llama.cpp takes the head size from layer 0)"
    if feed_forward == 0 and (heads or last):
        feed_forward = 1
        why = "llama.cpp's deci would skip the attention's output otherwise" if heads else \
            "llama.cpp's deci selects the output rows in the last layer's MLP step"
        workaround = (workaround + "; " if workaround else "") + f"MLP removed: one all-zero channel ({why})"
    block = f"blk.{position}."
    tensors = []

    def norm(module: str):
        tensor = layer.norms.get(module)
        return (lambda: read_array(tensor)) if tensor is not None else (lambda: np.ones(hidden, np.float32))

    if heads:
        tensors.append((block + "attn_norm.weight", (hidden,), norm(ATTENTION_NORM)))
        for role, rows in ((Q, heads * head_dim), (K, kv_heads * head_dim), (V, kv_heads * head_dim)):
            tensors += _projection(layer, role, block, (rows, hidden), head_dim if role in (Q, K) else None)
        tensors += _projection(layer, O, block, (hidden, heads * head_dim), None)
    if feed_forward:
        tensors.append((block + "ffn_norm.weight", (hidden,), norm(MLP_NORM)))
        for role, shape in ((GATE, (feed_forward, hidden)), (UP, (feed_forward, hidden)), (DOWN, (hidden, feed_forward))):
            tensors += _projection(layer, role, block, shape, None)
    return GgufLayer(heads, kv_heads, feed_forward, tensors, workaround)


def _projection(layer: SourceLayer, role: str, block: str, shape: tuple, rope_head_dim: int | None) -> list:
    """A projection's weight (and bias) under its GGUF name; all zeros where a work-around added it."""
    projection = layer.projections.get(role)
    name = block + GGUF_NAMES[role]
    if projection is None:
        return [(name + ".weight", shape, lambda: np.zeros(shape, np.float32))]

    def weight():
        values = read_array(projection.weight)
        return _rope_order(values, rope_head_dim) if rope_head_dim else values

    out = [(name + ".weight", tuple(projection.weight.shape), weight)]
    if projection.bias is not None:
        def bias():
            values = read_array(projection.bias)
            return _rope_order(values, rope_head_dim) if rope_head_dim else values

        out.append((name + ".bias", tuple(projection.bias.shape), bias))
    return out


def _rope_order(values: np.ndarray, head_dim: int) -> np.ndarray:
    """Rows of each head from transformers' half-split RoPE order (x0..x_{d/2-1}, then their partners) to
    llama.cpp's interleaved pairs; works on weights and biases, for any number of heads."""
    rows = values.shape[0]
    return values.reshape(rows // head_dim, 2, head_dim // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)


def _outside_tensors(source: ExportSource) -> list:
    outside = source.outside
    if "embedding" not in outside or "final_norm" not in outside:
        raise CheckpointError(source.path, "no token embedding or final norm found", "export the complete model")
    tensors = [("token_embd.weight", tuple(outside["embedding"].shape), lambda: read_array(outside["embedding"])),
               ("output_norm.weight", tuple(outside["final_norm"].shape), lambda: read_array(outside["final_norm"]))]
    if not source.structure.tied_embeddings and "lm_head" in outside:
        tensors.append(("output.weight", tuple(outside["lm_head"].shape), lambda: read_array(outside["lm_head"])))
    return tensors


def _add_vocabulary(writer, gguf, source: ExportSource, tokenizer: str | None) -> str:
    """The HF tokenizer (from --tokenizer, the model's folder or the base's) through gguf's vocab classes,
    else a placeholder of the right size (llama.cpp's `none` model: ids only, no text)."""
    from pathlib import Path

    size = source.structure.vocab_size
    for place in tokenizer_places(source, tokenizer):
        if not os.path.isdir(place):
            continue
        for kind in (gguf.vocab.LlamaHfVocab, gguf.vocab.BpeVocab, gguf.vocab.SentencePieceVocab):
            try:
                vocab = kind(Path(place))
            except Exception:  # noqa: BLE001 - each class raises its own way when the files are not its kind
                continue
            tokens, scores, types = [], [], []
            for text, score, token_type in vocab.all_tokens():
                tokens.append(text)
                scores.append(score)
                types.append(token_type)
            if len(tokens) > size:
                return f"tokenizer in {place} has {len(tokens)} tokens for {size} embeddings: not written"
            for index in range(len(tokens), size):  # embedding rows beyond the tokenizer (padding)
                tokens.append(f"[PAD{index}]".encode())
                scores.append(-1000.0)
                types.append(gguf.TokenType.UNUSED)
            writer.add_tokenizer_model(vocab.tokenizer_model)
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            gguf.SpecialVocab(Path(place), load_merges=vocab.tokenizer_model == "gpt2", n_vocab=size).add_to_gguf(writer, quiet=True)
            return f"tokenizer from {place} ({vocab.name}, {len(tokens)} tokens)"
        if place == tokenizer:
            raise CheckpointError(tokenizer, "no tokenizer llama.cpp can use (tokenizer.json, tokenizer.model, vocab.json)",
                                  "give the base model's folder")
    writer.add_tokenizer_model("none")
    return (f"no tokenizer files found: a placeholder vocabulary of {size} ids was written (llama.cpp runs token ids, "
            "not text); give --tokenizer BASE_FOLDER for a real one")


def _source_dtype(source: ExportSource) -> str:
    dtypes = {tensor.dtype for tensor in source.index.tensors if tensor.alias_of is None}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in ("F32", "F16", "BF16") else "F32"


def _element_type(gguf, shape: tuple, dtype: str):
    """(numpy type, GGML type for raw data or None, bytes per element); norms and biases stay F32, as llama.cpp's
    converter writes them."""
    if len(shape) == 1 or dtype == "F32":
        return np.float32, None, 4
    if dtype == "F16":
        return np.float16, None, 2
    return np.uint16, gguf.GGMLQuantizationType.BF16, 2


def _encoded(values: np.ndarray, dtype: str) -> np.ndarray:
    if values.ndim == 1 or dtype == "F32":
        return np.ascontiguousarray(values, np.float32)
    if dtype == "F16":
        return np.ascontiguousarray(values, np.float16)
    return bf16_bits(values)


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
