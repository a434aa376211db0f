"""`--to hf` (and the folder `--to hf-padded` writes): a folder transformers loads as it is.

config.json is rewritten from the shapes: the layer count, the (uniform) head, KV-head and MLP sizes,
head_dim, tying, and `layer_types` with the entries of the removed base layers deleted, so a
sliding/full pattern (Gemma-2, Qwen2) stays with the layers that were kept. Weights are linked (or,
with --copy, copied) when the source is safetensors that need no change, else written from the tensors.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..families.base import ATTENTION_PROJECTIONS, MLP_PROJECTIONS
from ..tensors import CheckpointError, TensorInfo
from .source import ExportSource, encode, read_array, read_bytes, temporary_beside, tokenizer_places

# Files that travel with a model for its tokenizer and generation defaults.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")
TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
CLI_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
# Model types whose transformers config can give every projection a bias (attention_bias, mlp_bias),
# among those sharing Llama's layout (whose o_proj/down_proj biases are therefore FLAP's).
BIAS_CONFIG_FAMILIES = ("llama",)
LLAMA_LAYOUT = ("llama",)


class OutTensor:
    """A tensor to write: its name, shape and a function giving its values (read only when written)."""

    __slots__ = ("name", "shape", "values", "raw")

    def __init__(self, name: str, shape, values=None, raw: TensorInfo | None = None):
        self.name, self.shape, self.values, self.raw = name, tuple(shape), values, raw


def export_hf(source: ExportSource, output: str, copy: bool = False, dtype: str | None = None,
              tokenizer: str | None = None) -> list[str]:
    """Write the folder; returns what to tell the user."""
    if any(layer.structure.shortcut for layer in source.layers):
        raise CheckpointError(source.path, "SliceGPT's shortcut matrices: no transformers model class has them",
                              "load it with SliceGPT's own code")
    sizes = uniform_sizes(source)
    biases = bias_flags(source)
    config = hf_config(source, sizes, biases)
    renumbered = [layer.structure.layer_idx for layer in source.layers] != list(range(len(source.layers)))
    needs_rewrite = (source.index.format != "safetensors" or renumbered or dtype is not None
                     or bool(zero_biases(source, biases)))
    lines = []
    with staged_folder(output) as folder:
        if needs_rewrite:
            tensors = [OutTensor(name, tensor.shape, raw=tensor) for name, tensor in renamed_tensors(source)]
            tensors += zero_biases(source, biases)
            out_dtype = dtype or _common_dtype(source)
            write_safetensors(os.path.join(folder, "model.safetensors"), tensors, out_dtype)
            config["dtype"] = TORCH_DTYPES[out_dtype]
            lines.append(f"weights written as {out_dtype} safetensors ({len(tensors)} tensors)")
        else:
            single = len(source.index.files) == 1  # transformers looks for model.safetensors by that name
            for path in source.index.files + tuple(_shard_indexes(source)):
                target = os.path.join(folder, "model.safetensors" if single else os.path.basename(path))
                if copy:
                    shutil.copyfile(path, target)
                else:
                    os.symlink(os.path.realpath(path), target)
            lines.append(("weights copied from " if copy else "weights linked to ") + source.folder)
        write_config(folder, config)
        lines += carry_tokenizer(source, folder, tokenizer)
    lines.insert(0, f"wrote {output}: {len(source.layers)} layers, heads {sizes[0]}, KV heads {sizes[1]}, "
                    f"intermediate {sizes[2]} (transformers loads it with AutoModelForCausalLM)")
    return lines


# -- what the config says ----------------------------------------------------------------------


def uniform_sizes(source: ExportSource) -> tuple[int, int, int]:
    """(heads, KV heads, intermediate) shared by every layer; refuse when layers differ."""
    heads = {layer.structure.attention.num_heads for layer in source.layers}
    kv_heads = {layer.structure.attention.num_kv_heads for layer in source.layers}
    intermediate = {layer.structure.mlp.intermediate_size for layer in source.layers}
    if len(heads) == len(kv_heads) == len(intermediate) == 1 and None not in heads | kv_heads | intermediate \
            and 0 not in heads | kv_heads | intermediate:
        return heads.pop(), kv_heads.pop(), intermediate.pop()
    per_layer = ", ".join(f"{layer.structure.layer_idx}: {layer.structure.attention.num_heads}/"
                          f"{layer.structure.attention.num_kv_heads}/{layer.structure.mlp.intermediate_size}"
                          for layer in source.layers[:8]) + (", ..." if len(source.layers) > 8 else "")
    raise CheckpointError(source.path, f"layers differ in size (heads/KV heads/intermediate per layer: {per_layer}), "
                                       "which a transformers config cannot express",
                          "use --to gguf (llama.cpp, keeps the savings) or --to hf-padded (exact, no savings)")


def bias_flags(source: ExportSource) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias): whether the written model gives every attention / MLP projection a bias.
    FLAP leaves o_proj and down_proj biases, which only Llama's config can hold (as all-projection biases)."""
    has = {role: any(layer.projections.get(role) is not None and layer.projections[role].bias is not None
                     for layer in source.layers) for role in ATTENTION_PROJECTIONS + MLP_PROJECTIONS}
    extra = [role for role in ("o_proj", "gate_proj", "up_proj", "down_proj") if has[role]]
    if not extra or source.family.name not in LLAMA_LAYOUT:
        return False, False  # no biases added, or a family whose own biases these are (OPT, Phi)
    if source.config.get("model_type") not in (None, *BIAS_CONFIG_FAMILIES):
        raise CheckpointError(source.path, f"{', '.join(extra)} carry biases, which the "
                                           f"{source.config.get('model_type', source.family.name)} config cannot give",
                              "use --to gguf")
    return any(has[role] for role in ATTENTION_PROJECTIONS), any(has[role] for role in MLP_PROJECTIONS)


def hf_config(source: ExportSource, sizes: tuple[int, int, int], biases: tuple[bool, bool]) -> dict:
    """The source's config (or its base's) with every size taken from the shapes."""
    config = dict(source.config or source.base_config or {})
    if not config.get("model_type"):
        # A pickled transformers config keeps model_type on its class, not in the pickle: the class says it.
        from ..families import model_type_from_classes

        config["model_type"] = model_type_from_classes(source.index.module_classes)
    config = {key: value for key, value in config.items() if value is not None or key == "pad_token_id"}
    if not config.get("model_type"):
        raise CheckpointError(source.path, "no config with a model_type beside the weights or inside the pickle",
                              "give --base_model (its config.json is then the starting point)")
    structure = source.structure
    heads, kv_heads, intermediate = sizes
    sizes_by_meaning = {"layers": len(source.layers), "heads": heads, "kv_heads": kv_heads,
                        "intermediate": intermediate, "head_dim": structure.head_dim,
                        "hidden": structure.hidden_size, "vocab": structure.vocab_size}
    for meaning, value in sizes_by_meaning.items():  # under the names the family's config uses
        config[source.family.config_keys[meaning][0]] = value
    config["tie_word_embeddings"] = structure.tied_embeddings
    if biases[0] or biases[1]:
        config.update(attention_bias=biases[0], mlp_bias=biases[1])
    layer_types = kept_layer_types(source)
    if layer_types is not None:
        config["layer_types"] = layer_types
    if not config.get("architectures"):
        from ..families import class_prefix, short_class

        prefix = source.family.model_types.get(config["model_type"]) or \
            class_prefix(short_class(source.index.module_classes.get("")))
        config["architectures"] = [f"{prefix}ForCausalLM"]
    return config


def kept_layer_types(source: ExportSource) -> list | None:
    """`layer_types` of the layers that remain: the removed base layers' entries deleted (not the list
    cut short, which would shift a sliding/full pattern onto the wrong layers)."""
    base_types = (source.base_config or {}).get("layer_types")
    own_types = source.config.get("layer_types")
    count = len(source.layers)
    if isinstance(base_types, list) and source.removed_base_layers is not None:
        if len(base_types) == count + len(source.removed_base_layers):
            removed = set(source.removed_base_layers)
            return [kind for index, kind in enumerate(base_types) if index not in removed]
    if not isinstance(own_types, list) or len(own_types) == count:
        return own_types if isinstance(own_types, list) else None
    raise CheckpointError(source.path, f"config.json's layer_types lists {len(own_types)} layers, the model has "
                                       f"{count}: which entries belong to the removed layers is not known",
                          "give --base_model so prunescope can tell which layers were removed")


def write_config(folder: str, config: dict) -> None:
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True, default=str)


def carry_tokenizer(source: ExportSource, folder: str, tokenizer: str | None) -> list[str]:
    """Copy the tokenizer files from --tokenizer, else the model's folder, else the base's, else nothing (said)."""
    for place in tokenizer_places(source, tokenizer):
        found = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(place, name))]
        if found:
            for name in found:
                shutil.copyfile(os.path.join(place, name), os.path.join(folder, name))
            return [f"tokenizer files from {place}: {', '.join(found)}"]
        if place == tokenizer:
            raise CheckpointError(tokenizer, "no tokenizer files (tokenizer.json, tokenizer.model, ...)",
                                  "give the folder of the base model's tokenizer")
    return ["no tokenizer files found: copy them from the base model, or give --tokenizer"]


# -- which tensors, under which names ------------------------------------------------------------


def renamed_tensors(source: ExportSource) -> list[tuple[str, TensorInfo]]:
    """Every parameter, its layer renumbered 0..N-1 in order (buffers and tied aliases left out)."""
    prefix = source.structure.layer_prefix
    buffers = set(source.structure.buffers)
    new_index = {layer.structure.layer_idx: position for position, layer in enumerate(source.layers)}
    out = []
    for tensor in source.index.tensors:
        if tensor.alias_of is not None or tensor.name in buffers:
            continue
        name = tensor.name
        if prefix and name.startswith(prefix + "."):
            index, rest = name[len(prefix) + 1:].split(".", 1)
            name = f"{prefix}.{new_index[int(index)]}.{rest}"
        out.append((name, tensor))
    return out


def zero_biases(source: ExportSource, biases: tuple[bool, bool]) -> list[OutTensor]:
    """All-zero biases for the projections that lack one, where the config now says every one has one."""
    prefix = source.structure.layer_prefix
    out = []
    for position, layer in enumerate(source.layers):
        for roles, wanted in ((ATTENTION_PROJECTIONS, biases[0]), (MLP_PROJECTIONS, biases[1])):
            for role in roles:
                projection = layer.projections.get(role)
                if wanted and projection is not None and projection.bias is None:
                    local = projection.weight.name.split(f"{prefix}.{layer.structure.layer_idx}.", 1)[1]
                    rows = projection.weight.shape[0]
                    out.append(OutTensor(f"{prefix}.{position}.{local[:-len('weight')]}bias", (rows,),
                                         lambda rows=rows: np.zeros(rows, np.float32)))
    return out


def _common_dtype(source: ExportSource) -> str:
    """The source's float type when it has one (F64 and mixed files are written as F32)."""
    dtypes = {tensor.dtype for tensor in source.index.tensors if tensor.alias_of is None}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in TORCH_DTYPES else "F32"


def _shard_indexes(source: ExportSource) -> list[str]:
    folder = source.folder
    name = "model.safetensors.index.json"
    return [os.path.join(folder, name)] if len(source.index.files) > 1 and os.path.isfile(os.path.join(folder, name)) else []


# -- writing ------------------------------------------------------------------------------------


def write_safetensors(path: str, tensors: list[OutTensor], dtype: str) -> None:
    """A safetensors file, one tensor at a time (never the whole model in memory). Written here rather
    than with the safetensors package, which wants every tensor in memory as a numpy or torch array
    and has no numpy bf16; the format is its JSON header and the bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    itemsize = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    for tensor in tensors:
        count = 1
        for size in tensor.shape:
            count *= size
        header[tensor.name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + count * itemsize]}
        offset += count * itemsize
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    with open(path, "xb") as handle:
        handle.write(len(raw_header).to_bytes(8, "little"))
        handle.write(raw_header)
        for tensor in tensors:
            if tensor.raw is not None and tensor.raw.dtype == dtype:
                handle.write(read_bytes(tensor.raw))
            else:
                values = tensor.values() if tensor.raw is None else read_array(tensor.raw)
                handle.write(encode(np.asarray(values), dtype))


class staged_folder:
    """Write a folder under a temporary name beside `output`, then rename it into place: whole or nothing."""

    def __init__(self, output: str):
        self.output = os.path.abspath(output)
        self.temporary = temporary_beside(output)

    def __enter__(self) -> str:
        os.mkdir(self.temporary)
        return self.temporary

    def __exit__(self, kind, error, trace):
        if kind is None:
            os.rename(self.temporary, self.output)
        else:
            shutil.rmtree(self.temporary, ignore_errors=True)
        return False
