"""Native FP8 checkpoints with block scales (DeepSeek-V3 style, transformers' `quant_method: "fp8"`):
`P.weight` F8_E4M3 in the logical shape, `P.weight_scale_inv` F32 [ceil(out/block), ceil(in/block)]."""

from __future__ import annotations

from ..tensors import TensorInfo
from . import PLAIN, Encoded, Quantization, bad, unquantized_matrices

FP8 = ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ")


def decode(by_name: dict[str, TensorInfo], quant_config: dict, config: dict, reads):
    encoded, overhead = {}, set()
    for name, tensor in by_name.items():
        if not name.endswith(".weight_scale_inv"):
            continue
        weight = by_name.get(name[:-len("_scale_inv")])
        if weight is None or weight.dtype not in FP8:
            raise bad(tensor, "a block scale without its fp8 weight")
        overhead.add(name)
        encoded[weight.name] = Encoded(weight, PLAIN, weight, 8, {"scale": tensor})
    overhead |= {name for name in by_name if name.endswith((".input_scale", ".activation_scale"))}
    block = quant_config.get("weight_block_size")
    quantization = Quantization(
        method="fp8", format=f"fp8 {quant_config.get('fmt') or 'e4m3'}" + (f" blocks {block}" if block else ""),
        bits=8, group_size=None, symmetric=True, activation_scheme=quant_config.get("activation_scheme"),
        unquantized_modules=unquantized_matrices(by_name, encoded, overhead))
    return encoded, overhead, quantization
