"""Quantized checkpoints written by the quantization libraries' own code, at test time, from tiny
pruned models (tests/builders.py) whose module counts are the oracle."""

from __future__ import annotations

import json

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


# -- bitsandbytes (CPU backend, through transformers) -----------------------------------------------


def save_bitsandbytes(model, folder: str, kind: str) -> dict[str, int]:
    """Save `model` dense, load it back quantized by bitsandbytes (nf4 + double quant, or LLM.int8)
    through transformers, save that. Returns nonzeros per weight after bitsandbytes' own dequantization."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dense = folder + "-dense"
    model.save_pretrained(dense)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=kind == "nf4",
                                bnb_4bit_compute_dtype=torch.bfloat16) if kind in ("nf4", "fp4") else \
        BitsAndBytesConfig(load_in_8bit=True)
    quantized = AutoModelForCausalLM.from_pretrained(dense, quantization_config=config, device_map="cpu")
    quantized.save_pretrained(folder)
    oracle = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight = bnb.functional.int8_vectorwise_dequant(module.weight.data, module.weight.SCB)
        else:
            continue
        oracle[name + ".weight"] = int((weight != 0).sum())
    return oracle


# -- GPTQ and AWQ: written following GPTQModel's and AutoAWQ's packing code ------------------------
# Neither library installs here without replacing torch or transformers (shared/notes/quantized.md,
# section 0), so these writers pack round-to-nearest codes exactly as GPTQModel 7.3.6
# (`nn_modules/qlinear/__init__.py::pack`) and AutoAWQ 0.2.9 (`modules/linear/gemm.py::from_linear`,
# `modules/linear/gemv.py::from_linear`)
# lay them out; the oracle is the dequantization of the integer codes before packing.

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _pack_rows(codes: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """[n, m] 4-bit codes -> int32 [n, m/8]: code of column 8c + order[k] at bits 4k of word c."""
    import numpy as np

    values = codes.to(torch.int64).numpy().astype(np.uint32).reshape(codes.shape[0], -1, 8)
    words = np.zeros(values.shape[:2], dtype=np.uint32)
    for k, column in enumerate(order):
        words |= values[:, :, column] << np.uint32(4 * k)
    return torch.from_numpy(words.view(np.int32))


def _rtn(weight: torch.Tensor, group_of_column: torch.Tensor, groups: int, symmetric: bool):
    """Round-to-nearest 4-bit codes [out, in], zero points and scales [groups, out], asymmetric min/max."""
    weight = weight.float()
    scales = torch.empty(groups, weight.shape[0])
    zeros = torch.empty(groups, weight.shape[0], dtype=torch.int64)
    codes = torch.empty(weight.shape, dtype=torch.int64)
    for group in range(groups):
        columns = (group_of_column == group).nonzero().flatten()
        block = weight[:, columns]
        if symmetric:
            scale = (block.abs().amax(1) / 7.5).clamp(min=1e-8)
            zero = torch.full((weight.shape[0],), 8, dtype=torch.int64)
        else:
            low, high = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
            scale = ((high - low) / 15).clamp(min=1e-8)
            zero = torch.round(-low / scale).to(torch.int64).clamp(0, 15)
        codes[:, columns] = (torch.round(block / scale[:, None]).to(torch.int64) + zero[:, None]).clamp(0, 15)
        scales[group], zeros[group] = scale, zero
    return codes, zeros, scales.to(torch.float16)


def _gemv_zeros_width(groups: int, group_size: int) -> int:
    """AutoAWQ's calculate_zeros_width: int32 words of zero points per row, rounded up for its kernel."""
    multiple = {32: 4, 64: 2}.get(group_size, 1)
    words = -(-groups // 8)
    return -(-words // multiple) * multiple


def save_packed(model, folder: str, method: str, act_order: bool = False, symmetric: bool = False,
                group_size: int = 32, version: int = 1) -> dict[str, int]:
    """GPTQ (v1: zero points stored minus one, v2: as they are; `g_idx`, permuted with act-order) or AWQ
    GEMM / GEMV files of `model`'s decoder linears. Returns nonzeros per weight of the dequantized codes."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    state, oracle = {}, {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if not (name.endswith(".weight") and ".layers." in name and tensor.dim() == 2):
            state[name] = tensor.contiguous()
            continue
        out_features, in_features = tensor.shape
        groups = in_features // group_size
        if act_order:  # GPTQ desc_act: groups follow the order columns were quantized in
            order = torch.randperm(in_features, generator=generator)
            group_of_column = torch.empty(in_features, dtype=torch.int64)
            group_of_column[order] = torch.arange(in_features) // group_size
        else:
            group_of_column = torch.arange(in_features) // group_size
        codes, zeros, scales = _rtn(tensor, group_of_column, groups, symmetric)
        dequantized = (codes - zeros.T[:, group_of_column]) * scales.float().T[:, group_of_column]
        oracle[name] = int((dequantized != 0).sum())
        if method == "gptq":
            state[f"{module}.qweight"] = _pack_rows(codes.T.contiguous().reshape(-1, 8, out_features)
                                                    .transpose(1, 2).reshape(-1, 8)).reshape(-1, out_features)
            state[f"{module}.qzeros"] = _pack_rows((zeros - (1 if version == 1 else 0)) & 15)
            state[f"{module}.g_idx"] = group_of_column.to(torch.int32)
        elif method == "awq-gemv":  # rows in order; zero points and scales per row, padded to the zeros width
            width = _gemv_zeros_width(groups, group_size)
            padded = torch.zeros(out_features, width * 8, dtype=torch.int64)
            padded[:, :groups] = zeros.T
            state[f"{module}.qweight"] = _pack_rows(codes)
            state[f"{module}.qzeros"] = _pack_rows(padded)
            padded_scales = torch.zeros(out_features, width * 8, dtype=torch.float16)
            padded_scales[:, :groups] = scales.T
            state[f"{module}.scales"] = padded_scales
            continue
        else:
            state[f"{module}.qweight"] = _pack_rows(codes.T.contiguous(), AWQ_ORDER)
            state[f"{module}.qzeros"] = _pack_rows(zeros, AWQ_ORDER)
        state[f"{module}.scales"] = scales
    model.config.save_pretrained(folder)
    quantization = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": act_order,
                    "sym": symmetric, "checkpoint_format": "gptq" if version == 1 else "gptq_v2",
                    "pack_dtype": "int32"} if method == "gptq" else \
        {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
         "version": "gemv" if method == "awq-gemv" else "gemm"}
    config = json.loads(open(f"{folder}/config.json").read())
    config["quantization_config"] = quantization
    with open(f"{folder}/config.json", "w") as handle:
        json.dump(config, handle)
    save_file(state, f"{folder}/model.safetensors", metadata={"format": "pt"})
    return oracle
