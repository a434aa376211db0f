"""Quantized checkpoints written by the quantization libraries' own code, at test time, from tiny
pruned models (tests/builders.py) whose module counts are the oracle."""

from __future__ import annotations

import torch

from builders import llama, prune_structurally

GROUP = 32


def pruned_llama(seed: int = 0, two_four: bool = True, structural: bool = True):
    """A tiny Llama, bf16, with one structurally pruned layer and (optionally) every linear weight of
    the decoder 2:4 magnitude-pruned, as SparseGPT/Wanda leave them."""
    torch.manual_seed(seed)
    model = llama(num_hidden_layers=3)
    if structural:
        prune_structurally(model, {1: (2, 1, 64)})  # in-widths stay multiples of the group size
    if two_four:
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and ".layers." in name:
                    weight = module.weight
                    groups = weight.abs().reshape(weight.shape[0], -1, 4)
                    drop = groups.argsort(dim=-1)[..., :2]
                    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
                    weight.mul_(keep.reshape(weight.shape))
    return model.to(torch.bfloat16)


def dense_nonzero(model) -> dict[str, int]:
    return {name: int((param != 0).sum()) for name, param in model.state_dict().items()}


# -- compressed-tensors ---------------------------------------------------------------------------


def ct_scheme(kind: str):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    if kind in ("w4a16", "w4a16-asym", "w8a16"):
        args = QuantizationArgs(num_bits=8 if kind == "w8a16" else 4, type="int", symmetric=kind != "w4a16-asym",
                                strategy="group", group_size=GROUP)
        return QuantizationScheme(targets=["Linear"], weights=args)
    if kind in ("w4a16-channel",):
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", strategy="channel"))
    if kind == "fp8":  # weight-only fp8: naive-quantized
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="float", strategy="channel"))
    if kind == "fp8-dynamic":  # FP8_DYNAMIC: float-quantized
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="float", strategy="channel"),
                                  input_activations=QuantizationArgs(num_bits=8, type="float", strategy="token", dynamic=True))
    if kind == "w8a8":  # int-quantized
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="int", strategy="channel"),
                                  input_activations=QuantizationArgs(num_bits=8, type="int", strategy="token", dynamic=True))
    raise ValueError(kind)


def save_compressed_tensors(model, folder: str, kind: str, ignore=("lm_head",)) -> dict[str, int]:
    """Quantize `model` (round to nearest, min/max scales computed by compressed-tensors' own
    `calculate_qparams`), compress it with compressed-tensors' ModelCompressor, save it and its config.
    Returns the oracle: nonzero values per dense weight name after the library's own decompression."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams

    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": ct_scheme(kind)}, ignore=list(ignore)))
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None:
            continue
        weight, args = module.weight.data.float(), scheme.weights
        if args.strategy == "group":
            blocks = weight.reshape(weight.shape[0], -1, args.group_size)
            low, high = blocks.amin(-1), blocks.amax(-1)
        else:
            low, high = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
        scale, zero_point = calculate_qparams(low, high, args)
        module.weight_scale.data = scale.to(module.weight_scale.dtype)
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data = zero_point.to(module.weight_zero_point.dtype)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    compressor.decompress_model(model)  # the library's own dequantization: the oracle for stored nonzeros
    return {name: int((param != 0).sum()) for name, param in model.state_dict().items() if name.endswith(".weight")}
