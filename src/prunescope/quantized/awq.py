"""AWQ checkpoints (AutoAWQ). Layout: shared/notes/quantized.md section 3.
GEMM, per module `P`: `P.qweight` I32 [in, out*bits/32] packed along the outputs in AWQ's interleaved
order, `P.qzeros` I32 [groups, out*bits/32] packed alike, `P.scales` [groups, out].
GEMV (AutoAWQ `awq/modules/linear/gemv.py::WQLinear_GEMV.from_linear`): `P.qweight` I32 [out, in/8],
value 8c + k of a row at bits 4k of word c; `P.qzeros` I32 [out, zeros_width], group 8c + k of a row at
bits 4k of word c, padded; `P.scales` F16 [out, zeros_width * 8], padded. The dense weight is [out, in]."""

from __future__ import annotations

from ..tensors import CheckpointError, TensorInfo
from . import AWQ, AWQ_GEMV, Encoded, Quantization, bad, logical, model_dtype, unquantized_matrices


def decode(by_name: dict[str, TensorInfo], quant_config: dict, config: dict, reads):
    first = next(iter(by_name.values()))
    version = str(quant_config.get("version") or "gemm").lower()
    bits = quant_config.get("bits", quant_config.get("w_bit", 4))
    if version not in ("gemm", "gemv") or bits != 4:
        raise CheckpointError(first.file, f"AWQ {version} with {bits}-bit weights: prunescope cannot decode it",
                              "supported: AWQ GEMM and GEMV, 4 bits")
    group_size = quant_config.get("group_size", quant_config.get("q_group_size"))
    group_size = group_size if isinstance(group_size, int) and group_size > 0 else None
    encoded, overhead = {}, set()
    for name, tensor in by_name.items():
        module, _, suffix = name.rpartition(".")
        if suffix != "qweight":
            continue
        zeros, scales = by_name.get(f"{module}.qzeros"), by_name.get(f"{module}.scales")
        if zeros is None or scales is None or tensor.dtype != "I32" or len(tensor.shape) != 2 or len(scales.shape) != 2:
            raise bad(tensor, "an AWQ qweight without its qzeros and scales")
        if version == "gemv":
            weight = _gemv(module, tensor, zeros, scales, group_size, config)
            overhead |= {zeros.name, scales.name}
            encoded[weight.logical.name] = weight
            continue
        in_features, out_features = tensor.shape[0], scales.shape[1]
        groups = -(-in_features // group_size) if group_size else 1
        if tensor.shape[1] * 8 != out_features or scales.shape[0] != groups or zeros.shape != (groups, tensor.shape[1]):
            raise bad(tensor, f"shapes qweight {list(tensor.shape)}, qzeros {list(zeros.shape)}, scales "
                              f"{list(scales.shape)} do not fit 4-bit AWQ GEMM with group size {group_size or 'none'}")
        overhead |= {zeros.name, scales.name}
        weight = logical(tensor, f"{module}.weight", (out_features, in_features), model_dtype(config, scales.dtype))
        encoded[weight.name] = Encoded(weight, AWQ, tensor, bits, {"zero_point": zeros, "scale": scales}, group_size)
    quantization = Quantization(
        method="awq", format=f"awq {version}", bits=bits, group_size=group_size,
        symmetric=not quant_config.get("zero_point", True),
        unquantized_modules=unquantized_matrices(by_name, encoded, overhead))
    return encoded, overhead, quantization


def _gemv(module: str, tensor: TensorInfo, zeros: TensorInfo, scales: TensorInfo, group_size, config) -> Encoded:
    out_features, in_features = tensor.shape[0], tensor.shape[1] * 8
    group_size = group_size or in_features
    groups = in_features // group_size
    if in_features % group_size or zeros.shape[0] != out_features or zeros.shape[1] * 8 < groups \
            or scales.shape != (out_features, zeros.shape[1] * 8):
        raise bad(tensor, f"shapes qweight {list(tensor.shape)}, qzeros {list(zeros.shape)}, scales "
                          f"{list(scales.shape)} do not fit 4-bit AWQ GEMV with group size {group_size}")
    weight = logical(tensor, f"{module}.weight", (out_features, in_features), model_dtype(config, scales.dtype))
    return Encoded(weight, AWQ_GEMV, tensor, 4, {"zero_point": zeros, "scale": scales}, group_size)
