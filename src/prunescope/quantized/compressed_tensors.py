"""compressed-tensors (llm-compressor) checkpoints: pack-quantized, int/float/naive-quantized, sparse-bitmask,
sparse-24-bitmask, and dense models that only carry the config. Layouts: shared/notes/quantized.md section 1.

Each module is recognised by its tensors' names, not by matching the config's targets (which needs
the model's module types): `P.weight_packed` + `P.weight_shape` (packed ints), `P.compressed` +
`P.bitmask` + `P.shape` (bitmask sparsity), `P.weight` beside `P.weight_scale` (fp8 / int8 in place).
"""

from __future__ import annotations

from ..tensors import CheckpointError, TensorInfo
from . import (BITMASK, BITMASK_24, INT_ZERO_POINT, PACKED_ROWS, PLAIN, Encoded, Quantization, bad, logical,
               model_dtype, unquantized_matrices)

DECODED_FORMATS = {"pack-quantized", "int-quantized", "float-quantized", "naive-quantized", "dense",
                   "sparse-bitmask", "sparse-24-bitmask", "mixed-precision"}
# Tensors beside a module's weight that describe its encoding (or its activations'): never parameters.
ENCODING_SUFFIXES = frozenset(("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "weight_global_scale",
                     "input_scale", "input_zero_point", "input_global_scale", "output_scale", "output_zero_point",
                     "k_scale", "v_scale", "q_scale", "k_zero_point", "v_zero_point", "shape", "bitmask",
                     "row_offsets"))
PACKED_BITS = (4, 8, 2)  # bit widths whose packing every compressed-tensors version writes alike


def decode(by_name: dict[str, TensorInfo], quant_config: dict, config: dict, reads):
    groups = quant_config.get("config_groups") if isinstance(quant_config.get("config_groups"), dict) else {}
    sparsity = quant_config.get("sparsity_config") if isinstance(quant_config.get("sparsity_config"), dict) else {}
    formats = {quant_config.get("format")} | {group.get("format") for group in groups.values() if isinstance(group, dict)}
    formats |= {sparsity.get("format")}
    unknown = sorted(str(name) for name in formats - DECODED_FORMATS - {None})
    first = next(iter(by_name.values()))
    if unknown:
        raise CheckpointError(first.file, f"compressed-tensors format {', '.join(unknown)}: prunescope cannot "
                                          "decode it", "supported: " + ", ".join(sorted(DECODED_FORMATS)))
    encoded: dict[str, Encoded] = {}
    overhead = set()
    for name, tensor in by_name.items():
        module, _, suffix = name.rpartition(".")
        if suffix in ENCODING_SUFFIXES:
            overhead.add(name)
            continue
        if suffix == "weight_packed":
            item = _packed(module, tensor, by_name, groups, config, reads)
        elif suffix == "compressed" and f"{module}.bitmask" in by_name:
            item = _bitmask(module, tensor, by_name, reads)
        elif suffix == "weight" and f"{module}.weight_scale" in by_name:
            item = _in_place(module, tensor, by_name)
        else:
            continue
        encoded[item.logical.name] = item
    weights = [group.get("weights") for group in groups.values() if isinstance(group, dict)]
    weights = [args for args in weights if isinstance(args, dict)]
    activations = [group.get("input_activations") for group in groups.values() if isinstance(group, dict)]
    activations = [args for args in activations if isinstance(args, dict)]
    quantization = Quantization(
        method="compressed-tensors",
        format=quant_config.get("format") or (sparsity.get("format") if sparsity else None) or "dense",
        bits=_one(args.get("num_bits") for args in weights),
        group_size=_one(args.get("group_size") for args in weights),
        symmetric=_one(args.get("symmetric") for args in weights),
        act_order=_one(args.get("actorder") for args in weights),
        activation_scheme=_one(_activation(args) for args in activations),
        sparsity_format=sparsity.get("format"),
        sparsity_structure=sparsity.get("sparsity_structure"),
        unquantized_modules=unquantized_matrices(by_name, encoded, overhead) if encoded else (),
        config_version=quant_config.get("version"),
    )
    return encoded, overhead, quantization


def _packed(module: str, tensor: TensorInfo, by_name, groups, config, reads) -> Encoded:
    prefix = module + "."
    shape_tensor = by_name.get(prefix + "weight_shape")
    scale = by_name.get(prefix + "weight_scale")
    if shape_tensor is None or scale is None or tensor.dtype != "I32" or len(tensor.shape) != 2:
        raise bad(tensor, "a packed weight without its weight_shape and weight_scale")
    shape = reads.integers(shape_tensor)
    if len(shape) != 2 or shape[0] != tensor.shape[0]:
        raise bad(tensor, f"weight_shape {shape} does not fit packed shape {list(tensor.shape)}")
    columns = shape[1]
    for bits in PACKED_BITS:
        if -(-columns * bits // 32) == tensor.shape[1]:
            break
    else:
        raise bad(tensor, f"{tensor.shape[1]} int32 words per row of {columns} values: a bit width whose packing "
                          "differs between compressed-tensors versions (only 2, 4 and 8 bits are decoded)")
    groups_per_row = scale.shape[1] if len(scale.shape) == 2 else 1
    group_size = columns // groups_per_row if groups_per_row > 1 else None
    if group_size is not None and -(-columns // group_size) != groups_per_row:
        raise bad(scale, f"{groups_per_row} scale groups for {columns} columns")
    parts = {"scale": scale, "shape": shape_tensor}
    for part, suffix in (("zero_point", "weight_zero_point"), ("g_idx", "weight_g_idx")):
        if prefix + suffix in by_name:
            parts[part] = by_name[prefix + suffix]
    dtype = scale.dtype if scale.dtype in ("BF16", "F16", "F32") else model_dtype(config, "BF16")
    return Encoded(logical(tensor, prefix + "weight", shape, dtype), PACKED_ROWS, tensor, bits, parts, group_size)


def _bitmask(module: str, tensor: TensorInfo, by_name, reads) -> Encoded:
    shape_tensor = by_name.get(f"{module}.shape")
    bitmask = by_name[f"{module}.bitmask"]
    if shape_tensor is None:
        raise bad(tensor, "bitmask-compressed values without their shape")
    shape = reads.integers(shape_tensor)
    two_four = len(shape_tensor.shape) == 2  # sparse-24-bitmask stores the shape as [[rows], [columns]]
    if len(shape) != 2 or len(bitmask.shape) != 2 or bitmask.shape != (shape[0], -(-shape[1] // 8)):
        raise bad(tensor, f"bitmask {list(bitmask.shape)} does not fit shape {shape}")
    if two_four and tensor.numel * 2 != shape[0] * shape[1]:
        raise bad(tensor, f"{tensor.numel} values are not half of shape {shape} (2:4)")
    parts = {"bitmask": bitmask, "shape": shape_tensor}
    if f"{module}.row_offsets" in by_name:
        parts["row_offsets"] = by_name[f"{module}.row_offsets"]
    if f"{module}.weight_scale" in by_name:
        parts["scale"] = by_name[f"{module}.weight_scale"]
    if f"{module}.weight_zero_point" in by_name:
        raise bad(tensor, "bitmask-compressed values with zero points (not a layout compressed-tensors writes)")
    bits = 8 * tensor.itemsize
    return Encoded(logical(tensor, f"{module}.weight", shape, tensor.dtype), BITMASK_24 if two_four else BITMASK,
                   tensor, bits, parts)


def _in_place(module: str, tensor: TensorInfo, by_name) -> Encoded:
    """int-, float- and naive-quantized: the codes keep the weight's name and shape (fp8 or int8)."""
    parts = {"scale": by_name[f"{module}.weight_scale"]}
    zero_point = by_name.get(f"{module}.weight_zero_point")
    scheme = PLAIN
    if zero_point is not None:
        parts["zero_point"] = zero_point
        if tensor.dtype.startswith("I"):
            scheme = INT_ZERO_POINT  # zero is encoded as the channel's zero point, not as 0
    scale = parts["scale"]
    groups_per_row = scale.shape[1] if len(scale.shape) == 2 and len(tensor.shape) == 2 else 1
    group_size = tensor.shape[1] // groups_per_row if groups_per_row > 1 else None
    return Encoded(tensor, scheme, tensor, 8 * tensor.itemsize, parts, group_size)


def _activation(args: dict) -> str | None:
    kind, bits = args.get("type"), args.get("num_bits")
    if not kind or not bits:
        return None
    timing = "dynamic" if args.get("dynamic") else "static"
    return f"{kind}{bits} {timing} {args.get('strategy') or ''}".strip()


def _one(values):
    """The one value all groups agree on, a sorted list when they differ, None when none says."""
    found = []
    for value in values:
        if value is not None and value not in found:
            found.append(value)
    if not found:
        return None
    return found[0] if len(found) == 1 else sorted(found, key=str)
