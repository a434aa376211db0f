"""bitsandbytes checkpoints (saved through transformers): 4-bit nf4/fp4 with or without double
quantisation, and LLM.int8. Layout: shared/notes/quantized.md section 4. A 4-bit weight is a flat
U8 tensor of codes; its logical shape is the JSON document stored, as bytes, in
`P.weight.quant_state.bitsandbytes__<type>`."""

from __future__ import annotations

import json

from ..tensors import TensorInfo
from . import BNB4, PLAIN, Encoded, Quantization, bad, logical, model_dtype, unquantized_matrices

QUANT_STATE = ".quant_state.bitsandbytes__"
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def decode(by_name: dict[str, TensorInfo], quant_config: dict, config: dict, reads):
    encoded, overhead = {}, set()
    types = set()
    for name, tensor in by_name.items():
        if QUANT_STATE in name:
            weight_name = name.split(QUANT_STATE)[0]
            weight = by_name.get(weight_name)
            if weight is None:
                raise bad(tensor, "a bitsandbytes quant state without its weight")
            try:
                state = json.loads(reads.data(tensor).decode("utf-8"))
                shape = [int(size) for size in state["shape"]]
                quant_type = str(state["quant_type"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise bad(tensor, "a quant state that is not the JSON bitsandbytes writes") from None
            numel = 1
            for size in shape:
                numel *= size
            if weight.dtype != "U8" or weight.numel != -(-numel // 2) or min(shape, default=0) <= 0:
                raise bad(weight, f"{weight.numel} bytes of 4-bit codes for shape {shape}")
            quant_map = by_name.get(f"{weight_name}.quant_map")
            if quant_map is None or quant_map.numel != 16:
                raise bad(weight, "a 4-bit weight without its 16-entry quant_map")
            # The codes that decode to zero (NF4: 7; FP4: +0 and -0), read from the map itself.
            zero_codes = tuple(code for code, value in enumerate(reads.floats(quant_map)) if value == 0)
            group = {part.name for part in by_name.values() if part.name.startswith(weight_name + ".")}
            overhead |= group
            types.add(quant_type)
            dtype = DTYPES.get(str(state.get("dtype")), model_dtype(config, "BF16"))
            encoded[weight_name] = Encoded(
                logical(weight, weight_name, shape, dtype), BNB4, weight, 4,
                {"quant_map": quant_map, "zero_codes": zero_codes, "quant_type": quant_type,
                 **({"absmax": by_name[f"{weight_name}.absmax"]} if f"{weight_name}.absmax" in by_name else {})},
                state.get("blocksize"))
        elif name.endswith(".SCB"):
            module = name[:-len(".SCB")]
            weight = by_name.get(f"{module}.weight")
            if weight is None or weight.dtype != "I8":
                raise bad(tensor, "an LLM.int8 row scale (SCB) without its int8 weight")
            overhead |= {name} | ({f"{module}.weight_format"} & set(by_name))
            types.add("int8")
            encoded[weight.name] = Encoded(weight, PLAIN, weight, 8, {"scale": tensor})
    four_bit = types - {"int8"}
    quantization = Quantization(
        method="bitsandbytes", format=", ".join(sorted(types)) or "none",
        bits=4 if four_bit and "int8" not in types else 8 if types == {"int8"} else None,
        group_size=_one({item.group_size for item in encoded.values() if item.scheme == BNB4}),
        symmetric=True,
        unquantized_modules=unquantized_matrices(by_name, encoded, overhead),
        notes=("double quantisation (absmax stored as 8-bit codes)",)
        if any(name.endswith(".nested_absmax") for name in by_name) else ())
    return encoded, overhead, quantization


def _one(values: set):
    return next(iter(values)) if len(values) == 1 else None
