"""GPTQ checkpoints (GPTQModel, AutoGPTQ): v1 and v2 formats, with or without act-order (`g_idx`).
Layout: shared/notes/quantized.md section 2. Per module `P`: `P.qweight` I32 [in*bits/32, out] packed
along the inputs, `P.qzeros` I32 [groups, out*bits/32] packed along the outputs (v1 stores zero - 1),
`P.scales` [groups, out], `P.g_idx` I32 [in]; the dense weight is [out, in].
"""

from __future__ import annotations

from ..tensors import CheckpointError, TensorInfo
from . import GPTQ, Encoded, Quantization, bad, logical, model_dtype, unquantized_matrices

FORMATS = {"gptq": 1, "gptq_v2": 2}  # checkpoint_format -> version (v1 stores zero points minus one)
PACKED_BITS = (2, 4, 8)  # 3-bit GPTQ packs across words differently: not decoded


def decode(by_name: dict[str, TensorInfo], quant_config: dict, config: dict, reads):
    first = next(iter(by_name.values()))
    checkpoint_format = str(quant_config.get("checkpoint_format") or "gptq").lower()
    bits = quant_config.get("bits")
    if checkpoint_format not in FORMATS:
        raise CheckpointError(first.file, f"GPTQ checkpoint format {checkpoint_format!r}: prunescope cannot decode "
                                          "it", "supported: " + ", ".join(FORMATS))
    if bits not in PACKED_BITS or str(quant_config.get("pack_dtype") or "int32").replace("torch.", "") != "int32":
        raise CheckpointError(first.file, f"GPTQ with {bits}-bit weights packed in {quant_config.get('pack_dtype') or 'int32'}"
                                          ": prunescope cannot decode it", "supported: 2, 4 and 8 bits in int32")
    group_size = quant_config.get("group_size")
    group_size = group_size if isinstance(group_size, int) and group_size > 0 else None
    per_word = 32 // bits
    encoded, overhead = {}, set()
    for name, tensor in by_name.items():
        module, _, suffix = name.rpartition(".")
        if suffix != "qweight":
            continue
        parts = {part: by_name.get(f"{module}.{part}") for part in ("qzeros", "scales", "g_idx")}
        zeros, scales, g_idx = parts["qzeros"], parts["scales"], parts["g_idx"]
        if zeros is None or scales is None or tensor.dtype != "I32" or len(tensor.shape) != 2:
            raise bad(tensor, "a GPTQ qweight without its qzeros and scales")
        out_features = tensor.shape[1]
        in_features = g_idx.shape[0] if g_idx is not None else tensor.shape[0] * per_word
        groups = -(-in_features // group_size) if group_size else 1
        if tensor.shape[0] * per_word != in_features or scales.shape != (groups, out_features) \
                or zeros.shape != (groups, -(-out_features // per_word)):
            raise bad(tensor, f"shapes qweight {list(tensor.shape)}, qzeros {list(zeros.shape)}, scales "
                              f"{list(scales.shape)} do not fit {bits}-bit GPTQ with group size {group_size or 'none'}")
        overhead |= {part.name for part in parts.values() if part is not None}
        parts = {"zero_point": zeros, "scale": scales, **({"g_idx": g_idx} if g_idx is not None else {})}
        weight = logical(tensor, f"{module}.weight", (out_features, in_features), model_dtype(config, scales.dtype))
        encoded[weight.name] = Encoded(weight, GPTQ, tensor, bits, parts, group_size,
                                       zero_offset=1 if FORMATS[checkpoint_format] == 1 else 0)
    quantization = Quantization(
        method="gptq", format=f"gptq v{FORMATS[checkpoint_format]}", bits=bits, group_size=group_size,
        symmetric=quant_config.get("sym"), act_order=quant_config.get("desc_act"),
        unquantized_modules=unquantized_matrices(by_name, encoded, overhead),
        config_version=_quantizer(quant_config))
    return encoded, overhead, quantization


def _quantizer(quant_config: dict) -> str | None:
    meta = quant_config.get("meta") if isinstance(quant_config.get("meta"), dict) else {}
    quantizer = meta.get("quantizer")
    if isinstance(quantizer, list):
        return ", ".join(str(item) for item in quantizer)
    return str(quantizer) if quantizer else None
