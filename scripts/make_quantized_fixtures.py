"""Write the committed real-library quantized fixtures under tests/fixtures/ (tests/test_quantized_fixtures.py).

Each fixture is a tiny pruned Llama quantized on the CPU by the library's own code, in a virtual
environment of its own (none of these libraries installs beside the project's torch/transformers; see
shared/notes/quantized.md, section 0), plus an `oracle.json` computed there at creation time:

- `dense`: the dense pruned model before quantization: `num_parameters()`, the shape of every
  `named_parameters()` entry, its head_dim and which decoder layers are all zeros;
- `quantized`: for every quantized linear, its logical shape [out, in] and `(w != 0).sum()` of the
  library's OWN dequantization of the stored codes;
- `unquantized`: `(t != 0).sum()` of every other parameter as stored (embeddings, norms, lm_head);
- the library's name and version (and those of torch/transformers).

The model: a Llama (hidden 128, 8 heads / 2 KV heads of 16, intermediate 256, vocab 256, 3 layers),
bf16/fp16, random weights from a fixed seed. Pruned as pruning tools leave it: layer 1 structurally
(4 heads, 1 KV head, intermediate 128, by replacing its Linear modules, config left stale, as LLM-Pruner
does), the linears of layers 0 and 1 magnitude-pruned 2:4, layer 2 all zeros (ShortGPT-style zeroed
layer); for AutoAWQ layer 1 keeps 2 KV heads and layer 2 is not zeroed (below). The libraries load the unpruned model from a folder (transformers cannot load pruned shapes),
then the pruning is applied to the loaded model in memory before it is quantized. Calibration: a few
random token sequences (no dataset download); tokenizers are a word-level toy made with `tokenizers`.

Virtual environments (Python 3.11; torch 2.13.0+cpu is the wheel on this machine's disk):

    python3.11 -m venv /work/venv-gptq
    /work/venv-gptq/bin/pip install torch==2.13.0 && /work/venv-gptq/bin/pip install gptqmodel==7.3.6 requests
    GPTQMODEL_CPU_WORKERS=2 /work/venv-gptq/bin/python scripts/make_quantized_fixtures.py gptq

    python3.11 -m venv /work/venv-awq
    /work/venv-awq/bin/pip install torch==2.13.0 && /work/venv-awq/bin/pip install autoawq==0.2.9 transformers==4.51.3
    /work/venv-awq/bin/python scripts/make_quantized_fixtures.py awq

    python3.11 -m venv /work/venv-llmc
    /work/venv-llmc/bin/pip install torch==2.13.0 && /work/venv-llmc/bin/pip install llmcompressor==0.14.0.1
    /work/venv-llmc/bin/python scripts/make_quantized_fixtures.py llmc

(run from the repository root; `--out DIR` writes elsewhere than tests/fixtures). Each subcommand
rewrites only its own fixture folders. Versions that made the committed files: gptqmodel 7.3.6
(transformers 5.24.0), autoawq 0.2.9 (transformers 4.51.3), llmcompressor 0.14.0.1 (compressed-tensors
0.19.0, transformers 5.17.0), all with torch 2.13.0+cpu; each oracle.json records its own.

What each library needed on the CPU (all checked when these files were made):
- GPTQModel 7.3.6 imports `requests` (not among its requirements) and torchvision (stood in for, see
  `_stand_in_torchvision`); `offload_to_disk=False`, else the model is a meta-device shell that cannot
  be pruned in memory. Its in-memory modules after `quantize()` hold v1 zero points (zero - 1) when the
  format is v1, so `dequantize_weight()` on them is off by one: the oracle loads the saved tensors into
  its TorchLinear and applies its loader's `convert_gptq_v1_to_v2_format_module` first.
- AutoAWQ 0.2.9: `apply_clip=False` (`_compute_best_clip` asserts out_features % 64 == 0); no 16-wide
  k/v_proj and no all-zero layer (see AWQ_STRUCTURAL).
- llm-compressor 0.14.0.1: run with `pipeline="sequential"`, `ignore=["re:.*lm_head"]`, group size 32 (the W4A16 preset's 128 does not
  divide layer 1's 64-wide o_proj input).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

HEAD_DIM = 16
CONFIG = dict(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=2,
              head_dim=HEAD_DIM, num_hidden_layers=3, vocab_size=256, max_position_embeddings=128,
              tie_word_embeddings=False)
STRUCTURAL = {1: (4, 1, 128)}  # layer: (heads, kv heads, intermediate)
# AutoAWQ 0.2.9 packs GEMM weights into `out_features // 32 * 4` words per row (`WQLinear_GEMM.from_linear`):
# a 16-wide k_proj/v_proj (one KV head) gets no words at all (IndexError), so its layer 1 keeps 2 KV heads
AWQ_STRUCTURAL = {1: (4, 2, 128)}
# and no all-zero layer for AutoAWQ: its scale search finds no finite loss there (`_compute_best_scale`
# raises a bare Exception when best_ratio stays -1)
TWO_FOUR = (0, 1)
ZERO = (2,)
KEEP = ("config.json", "quantize_config.json", "model.safetensors", "oracle.json")


# -- the dense pruned model ------------------------------------------------------------------------


def write_base(folder: str, dtype) -> None:
    """The unpruned tiny Llama (fixed seed) and a toy word-level tokenizer, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, torch_dtype=dtype)).to(dtype).eval()
    model.save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, CONFIG["vocab_size"])}}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="</s>")
    tokenizer.save_pretrained(folder)


def _resized(linear: torch.nn.Linear, out_features=None, in_features=None) -> torch.nn.Linear:
    out_features = out_features or linear.out_features
    in_features = in_features or linear.in_features
    smaller = torch.nn.Linear(in_features, out_features, bias=linear.bias is not None, dtype=linear.weight.dtype,
                              device=linear.weight.device)
    with torch.no_grad():
        smaller.weight.copy_(linear.weight[:out_features, :in_features])
    return smaller


def prune_(model, structural=None, zero=ZERO) -> None:
    """Structural pruning of STRUCTURAL's (or `structural`'s) layers, 2:4 magnitude pruning of TWO_FOUR's linears, ZERO's
    attention and MLP all zeros. In place, on the model as transformers built it."""
    layers = model.model.layers
    for index, (heads, kv_heads, intermediate) in (structural or STRUCTURAL).items():
        attention, mlp = layers[index].self_attn, layers[index].mlp
        attention.q_proj = _resized(attention.q_proj, out_features=heads * HEAD_DIM)
        attention.k_proj = _resized(attention.k_proj, out_features=kv_heads * HEAD_DIM)
        attention.v_proj = _resized(attention.v_proj, out_features=kv_heads * HEAD_DIM)
        attention.o_proj = _resized(attention.o_proj, in_features=heads * HEAD_DIM)
        mlp.gate_proj = _resized(mlp.gate_proj, out_features=intermediate)
        mlp.up_proj = _resized(mlp.up_proj, out_features=intermediate)
        mlp.down_proj = _resized(mlp.down_proj, in_features=intermediate)
        if hasattr(attention, "num_key_value_groups"):  # what repeat_kv uses, set from the (stale) config
            attention.num_key_value_groups = heads // kv_heads
    with torch.no_grad():
        for index in TWO_FOUR:
            for module in layers[index].modules():
                if isinstance(module, torch.nn.Linear):
                    weight = module.weight
                    groups = weight.abs().reshape(weight.shape[0], -1, 4)
                    drop = groups.argsort(dim=-1)[..., :2]
                    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
                    weight.mul_(keep.reshape(weight.shape))
        for index in zero:
            for part in (layers[index].self_attn, layers[index].mlp):
                for parameter in part.parameters():
                    parameter.zero_()


def dense_oracle(model) -> dict:
    """The dense pruned model's own counts, before quantization."""
    layers = model.model.layers
    return {
        "num_parameters": model.num_parameters(),
        "head_dim": HEAD_DIM,
        "parameters": {name: list(parameter.shape) for name, parameter in model.named_parameters()},
        "zero_layers": [index for index, layer in enumerate(layers)
                        if all(bool((p == 0).all()) for part in (layer.self_attn, layer.mlp) for p in part.parameters())],
    }


def calibration(count: int = 8, length: int = 32) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, CONFIG["vocab_size"], (count, length), generator=generator).tolist()


def finish(folder: str, library: str, version: str, dense: dict, quantized: dict, extra: dict | None = None) -> None:
    """Delete everything but the checkpoint and its configs, check the weights are one small file,
    write oracle.json."""
    import transformers

    for name in os.listdir(folder):
        if name not in KEEP:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for name in ("config.json", "quantize_config.json"):  # no local temp paths in the committed files
        path = os.path.join(folder, name)
        if os.path.exists(path):
            config = json.loads(open(path).read())
            _scrub(config)
            with open(path, "w") as handle:
                json.dump(config, handle, indent=2, sort_keys=True)
    from safetensors.torch import load_file

    state = load_file(os.path.join(folder, "model.safetensors"))
    unquantized = {}  # the dense model's other parameters, as stored (AWQ folds its scales into the norms)
    for name in dense["parameters"]:
        if name not in quantized:
            unquantized[name] = int((state[name] != 0).sum())
            assert list(state[name].shape) == dense["parameters"][name], name
    for name, entry in quantized.items():
        assert entry["shape"] == dense["parameters"][name], name
    oracle = {"library": library, "version": version, "torch": torch.__version__,
              "transformers": transformers.__version__, "dense": dense, "quantized": quantized,
              "unquantized": unquantized, **(extra or {})}
    with open(os.path.join(folder, "oracle.json"), "w") as handle:
        json.dump(oracle, handle, indent=1, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    assert size < 1_000_000, (folder, size)
    print(f"{folder}: {size} bytes, {len(quantized)} quantized linears")


def _scrub(value) -> None:
    if isinstance(value, dict):
        for key in list(value):
            if key in ("offload_to_disk_path", "_name_or_path", "name_or_path"):
                value[key] = None
            else:
                _scrub(value[key])
    elif isinstance(value, list):
        for item in value:
            _scrub(item)


def check_stored(folder: str, module_buffers: dict[str, dict[str, torch.Tensor]], skip=()) -> None:
    """The saved file holds the very buffers the oracle dequantized (names in `skip` may differ)."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(folder, "model.safetensors"))
    for module, buffers in module_buffers.items():
        for key, tensor in buffers.items():
            if key in skip:
                continue
            stored = state[f"{module}.{key}"]
            assert stored.shape == tensor.shape and torch.equal(stored, tensor.to(stored.dtype).cpu()), (module, key)


# -- GPTQModel ------------------------------------------------------------------------------------


def _stand_in_torchvision() -> None:
    """GPTQModel imports torchvision only for InternVL's image transforms
    (`gptqmodel/models/definitions/internvl_chat.py`); the only torchvision wheels for torch 2.13 here
    are CUDA builds, so an empty module stands in for it while gptqmodel imports, when it is missing
    (transformers is imported first: it checks for torchvision with `find_spec`)."""
    import importlib
    import importlib.util
    import types

    importlib.import_module("transformers")
    if importlib.util.find_spec("torchvision") is not None:
        return
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    sys.modules["torchvision.transforms.functional"].InterpolationMode = type("InterpolationMode", (), {})


def make_gptq(out: str) -> None:
    _stand_in_torchvision()
    import gptqmodel
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    for name in ("torchvision.transforms.functional", "torchvision.transforms", "torchvision"):
        if getattr(sys.modules.get(name), "__spec__", True) is None:
            del sys.modules[name]

    variants = {
        "gptqmodel-gptq-g32-sym": dict(group_size=32, desc_act=False, sym=True),
        "gptqmodel-gptq-g64-act-order-asym": dict(group_size=64, desc_act=True, sym=False),
        "gptqmodel-gptq_v2-g32-asym": dict(group_size=32, desc_act=False, sym=False, format="gptq_v2"),
    }
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        write_base(base, torch.bfloat16)
        for name, options in variants.items():
            model = GPTQModel.load(base, QuantizeConfig(bits=4, offload_to_disk=False, **options), device="cpu")
            prune_(model.model)
            dense = dense_oracle(model.model)
            data = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration()]
            model.quantize(data, batch_size=1)
            folder = os.path.join(out, name)
            shutil.rmtree(folder, ignore_errors=True)
            model.save(folder)
            quantized = gptq_dequantized_from_file(folder)
            # Cross-check against the modules GPTQModel holds in memory. They keep the zero points in the
            # format being written: v1 (zero - 1) modules are dequantized after the loader's conversion
            # (dequantizing them as they are is off by one, every code a nonzero)
            for module_name, module in model.model.named_modules():
                if isinstance(module, BaseQuantLinear):
                    if options.get("format", "gptq") == "gptq":
                        convert_gptq_v1_to_v2_format_module(module, bits=4, pack_dtype=torch.int32)
                    nonzero = int((module.dequantize_weight() != 0).sum())
                    assert quantized[module_name + ".weight"]["nonzero"] == nonzero, (name, module_name)
            finish(folder, "gptqmodel", gptqmodel.__version__, dense, quantized, {"options": options})


def gptq_dequantized_from_file(folder: str) -> dict:
    """Every quantized linear of the saved file, loaded into GPTQModel's own TorchLinear as its
    loader does (v1 zero points converted to v2 by `convert_gptq_v1_to_v2_format_module`), then
    dequantized by its `dequantize_weight()` (W^T, [in, out])."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    from safetensors.torch import load_file

    config = json.loads(open(os.path.join(folder, "config.json")).read())["quantization_config"]
    state = load_file(os.path.join(folder, "model.safetensors"))
    quantized = {}
    for key in sorted(state):
        if not key.endswith(".qweight"):
            continue
        prefix = key[: -len(".qweight")]
        in_features, out_features = state[prefix + ".g_idx"].shape[0], state[prefix + ".scales"].shape[1]
        module = TorchLinear(bits=config["bits"], group_size=config["group_size"], sym=config["sym"],
                                  desc_act=config["desc_act"], in_features=in_features, out_features=out_features,
                                  bias=False, pack_dtype=torch.int32)
        for buffer in ("qweight", "qzeros", "scales", "g_idx"):
            getattr(module, buffer).data.copy_(state[f"{prefix}.{buffer}"])
        if config["checkpoint_format"] == "gptq":
            convert_gptq_v1_to_v2_format_module(module, bits=config["bits"], pack_dtype=torch.int32)
        weight = module.dequantize_weight()
        assert list(weight.shape) == [in_features, out_features]
        quantized[prefix + ".weight"] = {"shape": [out_features, in_features], "nonzero": int((weight != 0).sum())}
    return quantized


# -- AutoAWQ --------------------------------------------------------------------------------------


def make_awq(out: str) -> None:
    """AutoAWQ GEMM (oracle: its `dequantize_gemm` of the saved tensors, cross-checked with its fake
    quantization) and GEMV (no CPU dequantization exists for GEMV, only CUDA kernels: the oracle is
    AutoAWQ's own fake-quantized weight, `pseudo_quantize_tensor`'s output that `from_linear` packs)."""
    import awq
    from awq import AutoAWQForCausalLM
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.modules.linear.gemv import WQLinear_GEMV
    from awq.utils.packing_utils import dequantize_gemm
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    fake_quantized = {}  # id(packed module) -> nonzeros of the weight AutoAWQ packed into it

    def recording(cls):
        original = cls.from_linear.__func__

        def from_linear(cls, linear, *args, **kwargs):
            packed = original(cls, linear, *args, **kwargs)
            fake_quantized[id(packed)] = int((linear.weight != 0).sum())
            return packed
        cls.from_linear = classmethod(from_linear)

    recording(WQLinear_GEMM)
    recording(WQLinear_GEMV)
    variants = {"autoawq-gemm-g64": dict(version="GEMM", q_group_size=64),
                "autoawq-gemv-g32": dict(version="GEMV", q_group_size=32)}
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        write_base(base, torch.float16)
        tokenizer = AutoTokenizer.from_pretrained(base)
        for name, options in variants.items():
            fake_quantized.clear()
            model = AutoAWQForCausalLM.from_pretrained(base, device_map="cpu", torch_dtype=torch.float16)
            prune_(model.model, AWQ_STRUCTURAL, zero=())
            dense = dense_oracle(model.model)
            # apply_clip=False: `_compute_best_clip` asserts out_features % 64 == 0 (k_proj has 32)
            model.quantize(tokenizer, quant_config={"zero_point": True, "w_bit": 4, **options},
                           calib_data=calibration(), max_calib_samples=8, max_calib_seq_len=32, apply_clip=False)
            folder = os.path.join(out, name)
            shutil.rmtree(folder, ignore_errors=True)
            model.save_quantized(folder)
            state = load_file(os.path.join(folder, "model.safetensors"))
            quantized = {}
            for module_name, module in model.model.named_modules():
                if not isinstance(module, (WQLinear_GEMM, WQLinear_GEMV)):
                    continue
                for buffer in ("qweight", "qzeros", "scales"):
                    assert torch.equal(state[f"{module_name}.{buffer}"], getattr(module, buffer)), (module_name, buffer)
                nonzero = fake_quantized[id(module)]
                if isinstance(module, WQLinear_GEMM):
                    weight = dequantize_gemm(module.qweight, module.qzeros, module.scales, 4, module.group_size)
                    assert list(weight.shape) == [module.in_features, module.out_features]
                    assert int((weight != 0).sum()) == nonzero, module_name
                quantized[module_name + ".weight"] = {"shape": [module.out_features, module.in_features],
                                                      "nonzero": nonzero}
            assert len(quantized) == len(fake_quantized)
            finish(folder, "autoawq", awq.__version__, dense, quantized, {"options": options})


# -- llm-compressor -------------------------------------------------------------------------------


def make_llmc(out: str) -> None:
    """llm-compressor's `oneshot`: SparseGPT 2:4 then GPTQ W4A16 (pack-quantized), and FP8_DYNAMIC
    (float-quantized). Oracle: compressed-tensors' own per-module `decompress` of the saved tensors."""
    import compressed_tensors
    import llmcompressor
    from compressed_tensors.compressors.base import BaseCompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ignore = ["re:.*lm_head"]  # not "lm_head": SparseGPT would prune the output layer (notes, pitfall 1)
    variants = {
        "llmcompressor-sparsegpt24-w4a16": [
            SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=ignore),
            GPTQModifier(config_groups={"group_0": {  # W4A16 with group 32: layer 1's o_proj is 64 wide
                "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                   "strategy": "group", "group_size": 32}}}, ignore=ignore)],
        "llmcompressor-fp8-dynamic": [QuantizationModifier(scheme="FP8_DYNAMIC", targets=["Linear"], ignore=ignore)],
    }
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        write_base(base, torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(base)
        ids = calibration()
        dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]})
        for name, recipe in variants.items():
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
            prune_(model)
            dense = dense_oracle(model)
            model.config.name_or_path = base  # oneshot re-reads config.json from there
            oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=recipe, num_calibration_samples=len(ids),
                    max_seq_length=32, pipeline="sequential")
            folder = os.path.join(out, name)
            shutil.rmtree(folder, ignore_errors=True)
            model.save_pretrained(folder, save_compressed=True)
            config = json.loads(open(os.path.join(folder, "config.json")).read())["quantization_config"]
            compressor = BaseCompressor.get_value_from_registry(config["format"])
            state = load_file(os.path.join(folder, "model.safetensors"))
            quantized = {}
            for module_name, module in model.named_modules():
                scheme = getattr(module, "quantization_scheme", None)
                if scheme is None:
                    continue
                local = {key[len(module_name) + 1:]: tensor for key, tensor in state.items()
                         if key.startswith(module_name + ".") and "." not in key[len(module_name) + 1:]}
                weight = compressor.decompress(local, scheme)["weight"]
                quantized[module_name + ".weight"] = {"shape": list(weight.shape), "nonzero": int((weight != 0).sum())}
            finish(folder, "llmcompressor", llmcompressor.__version__, dense, quantized,
                   {"compressed_tensors": compressed_tensors.__version__,
                    "recipe": [type(modifier).__name__ for modifier in recipe]})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", choices=["gptq", "awq", "llmc"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "tests", "fixtures"))
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # GPTQModel and llm-compressor write log folders into the working directory
        {"gptq": make_gptq, "awq": make_awq, "llmc": make_llmc}[args.library](out)


if __name__ == "__main__":
    sys.exit(main())
