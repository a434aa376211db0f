"""Run under compressed-tensors 0.14 (the last version with the sparse compressors, removed in 0.15):
`python write_legacy_compressed_tensors.py DENSE_FOLDER OUT_FOLDER KIND`. Loads the dense pruned
model, quantizes and/or sparsity-compresses it with the library's own code, saves it, and writes
OUT_FOLDER/oracle.json: nonzeros per weight after the library's own decompression."""

import json
import sys

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                             apply_quantization_config)
from compressed_tensors.quantization.utils import calculate_qparams
from transformers import AutoModelForCausalLM

GROUP = 32


def quantize(model, args: QuantizationArgs) -> None:
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is None:
            continue
        weight = module.weight.data.float()
        if args.strategy == "group":
            columns = weight.shape[1]
            group_of_column = torch.arange(columns) // GROUP
            if hasattr(module, "weight_g_idx"):  # act-order: groups follow a quantization order
                order = torch.randperm(columns, generator=generator)
                group_of_column = torch.empty(columns, dtype=torch.int64)
                group_of_column[order] = torch.arange(columns) // GROUP
                module.weight_g_idx.data = group_of_column.to(module.weight_g_idx.dtype)
            blocks = torch.stack([weight[:, group_of_column == g] for g in range(columns // GROUP)], dim=1)
            low, high = blocks.amin(-1), blocks.amax(-1)
        else:
            low, high = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
        scale, zero_point = calculate_qparams(low, high, args)
        module.weight_scale.data = scale.to(module.weight_scale.dtype)
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data = zero_point.to(module.weight_zero_point.dtype)


def main(dense: str, out: str, kind: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.bfloat16)
    sparsity = None
    if kind == "sparse-bitmask":
        sparsity = BitmaskConfig(targets=["Linear"], ignore=["lm_head"])
    elif kind == "sparse-24-fp8":
        quantize(model, QuantizationArgs(num_bits=8, type="float", strategy="channel"))
        sparsity = Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"], sparsity_structure="2:4")
    elif kind == "w4a16-actorder":
        quantize(model, QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=GROUP, actorder="group"))
    compressor = ModelCompressor.from_pretrained_model(model, sparsity_config_or_format=sparsity)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    compressor.decompress_model(model)
    oracle = {name: int((value != 0).sum()) for name, value in model.state_dict().items() if name.endswith(".weight")}
    with open(f"{out}/oracle.json", "w") as handle:
        json.dump(oracle, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
