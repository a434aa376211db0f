"""`prunescope export`: pruned models written for transformers and llama.cpp compute what the pruned
module computes (logits within 1e-5, relative, in fp32), and their analysis gives the source's structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

import builders
from prunescope.cli import main

TOLERANCE = 1e-5
IDS = [[5, 17, 99, 3, 64, 120, 7, 42, 88, 1, 33, 76]]


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(IDS), use_cache=False).logits[0].float()


def loaded_logits(folder) -> torch.Tensor:
    return logits_of(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval())


def export(*args) -> int:
    return main(["export", *map(str, args)])


def inspected(path) -> dict:
    result = subprocess.run([sys.executable, "-m", "prunescope", "inspect", str(path), "--json"],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def shapes(structure: dict) -> list:
    return [(layer["attention"]["num_heads"], layer["attention"]["num_kv_heads"], layer["mlp"]["intermediate_size"],
             layer["total"]) for layer in structure["layers"]]


# -- tiny models pruned as the tools prune them ------------------------------------------------


def llm_pruner_model():
    """LLM-Pruner on a GQA Llama: whole KV groups removed (two query heads per KV head, as in the base)."""
    model = builders.llama(num_attention_heads=8, num_key_value_heads=4, head_dim=8, intermediate_size=128)
    builders.prune_structurally(model, {0: (6, 3, 100), 1: (4, 2, 64), 3: (2, 1, 32)})
    return model


def mixed_gqa_model():
    """Query heads pruned inside KV groups: per layer 3, 1 and 2 query heads per KV head (base: 2)."""
    model = builders.llama(num_attention_heads=8, num_key_value_heads=4, head_dim=8, intermediate_size=128)
    plan = {0: (6, 2, 96), 1: (3, 3, 128), 2: (4, 2, 40)}
    builders.prune_structurally(model, plan)
    for layer_idx, (heads, kv_heads, _) in plan.items():
        model.model.layers[layer_idx].self_attn.num_key_value_groups = heads // kv_heads
    return model


def flap_model(plan=None):
    """FLAP: heads and channels removed per layer, o_proj/down_proj biases, config left stale."""
    model = builders.llama(num_attention_heads=4, num_key_value_heads=4, intermediate_size=96)
    builders.add_flap_biases(model)
    builders.prune_structurally(model, plan or {0: (3, 3, 80), 1: (2, 2, 50), 2: (4, 4, 96), 3: (1, 1, 17)})
    return model


def save_pickle(model, folder):
    folder.mkdir(parents=True)
    torch.save({"model": model, "tokenizer": None}, folder / "pytorch_model.bin")
    return folder


def shortgpt(model, removed, folder):
    builders.remove_layers(model, removed)
    model.save_pretrained(folder)  # config left stale, as ShortGPT leaves it
    return model


# -- --to hf -------------------------------------------------------------------------------------


def test_stale_shortgpt_config_loads_silently_wrong(tmp_path):
    """The control: transformers loads the stale folder without a word and computes something else."""
    model = shortgpt(builders.llama(num_hidden_layers=6), [1, 4], tmp_path / "short")
    assert json.loads((tmp_path / "short" / "config.json").read_text())["num_hidden_layers"] == 6
    assert relative_difference(loaded_logits(tmp_path / "short"), logits_of(model)) > 0.05


def test_hf_shortgpt_llama(tmp_path, capsys):
    model = shortgpt(builders.llama(num_hidden_layers=6), [1, 4], tmp_path / "short")
    assert export(tmp_path / "short", "--to", "hf", "--output", tmp_path / "out") == 0
    assert "weights linked" in capsys.readouterr().out
    assert os.path.islink(tmp_path / "out" / "model.safetensors")
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 4
    assert shapes(inspected(tmp_path / "out")) == shapes(inspected(tmp_path / "short"))


def test_hf_copy_of_shards_leaves_no_links(tmp_path):
    model = builders.llama(num_hidden_layers=5)
    builders.remove_layers(model, [2])
    model.save_pretrained(tmp_path / "short", max_shard_size="40KB")
    assert export(tmp_path / "short", "--to", "hf", "--output", tmp_path / "out", "--copy") == 0
    written = sorted(os.listdir(tmp_path / "out"))
    assert "model.safetensors.index.json" in written and len([n for n in written if n.endswith(".safetensors")]) > 2
    assert not any(os.path.islink(tmp_path / "out" / name) for name in written)
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE


def gemma2_sliding(**extra):
    config = Gemma2Config(**builders.SMALL, head_dim=16, sliding_window=3, **extra)
    config.num_hidden_layers = 6
    config.layer_types = ["sliding_attention", "full_attention"] * 3
    return Gemma2ForCausalLM(config).eval()


def qwen2_sliding():
    config = Qwen2Config(**{**builders.SMALL, "num_hidden_layers": 6}, use_sliding_window=True, sliding_window=3,
                         layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention",
                                      "sliding_attention", "full_attention"])
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("build", [gemma2_sliding, qwen2_sliding], ids=["gemma2", "qwen2"])
def test_hf_shortgpt_keeps_the_sliding_pattern(tmp_path, build):
    """layer_types loses the removed layers' entries: cutting the list short would give the kept layers
    the wrong window (the test's sequence is longer than the window, so it would show in the logits)."""
    model = build()
    base_types = list(model.config.layer_types)
    model.save_pretrained(tmp_path / "base")
    shortgpt(model, [1], tmp_path / "short")
    assert export(tmp_path / "short", "--to", "hf", "--output", tmp_path / "out", "--base_model", tmp_path / "base") == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    kept = base_types[:1] + base_types[2:]
    assert config["layer_types"] == kept
    # The module's forward picks each layer's mask by its position in config.layer_types: give it the
    # kept layers' own types (what they were trained with), then compare; the cut-short list differs.
    model.config.layer_types = kept
    exported = loaded_logits(tmp_path / "out")
    assert relative_difference(exported, logits_of(model)) <= TOLERANCE
    model.config.layer_types = base_types[:len(kept)]
    assert relative_difference(exported, logits_of(model)) > 0.01
    # Without the base, which entries to delete is unknown: one line, nothing written.
    assert export(tmp_path / "short", "--to", "hf", "--output", tmp_path / "out2") == 1
    assert not os.path.exists(tmp_path / "out2")


def test_hf_flap_uniform_with_biases(tmp_path):
    model = flap_model({index: (2, 2, 48) for index in range(4)})
    model.save_pretrained(tmp_path / "flap")
    assert export(tmp_path / "flap", "--to", "hf", "--output", tmp_path / "out") == 0
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE


def test_hf_refuses_heterogeneous_layers_in_one_line(tmp_path, capsys):
    model = llm_pruner_model()
    save_pickle(model, tmp_path / "prune_log")
    capsys.readouterr()
    assert export(tmp_path / "prune_log", "--to", "hf", "--output", tmp_path / "out") == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--to gguf" in error and "--to hf-padded" in error
    assert not os.path.exists(tmp_path / "out")


def test_hf_from_a_pickle_writes_safetensors(tmp_path):
    model = builders.llama()
    builders.prune_structurally(model, {index: (2, 1, 40) for index in range(4)})
    save_pickle(model, tmp_path / "prune_log")
    source_bytes = (tmp_path / "prune_log" / "pytorch_model.bin").read_bytes()
    assert export(tmp_path / "prune_log", "--to", "hf", "--output", tmp_path / "out") == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE
    assert (tmp_path / "prune_log" / "pytorch_model.bin").read_bytes() == source_bytes
    assert shapes(inspected(tmp_path / "out")) == shapes(inspected(tmp_path / "prune_log"))


# -- --to hf-padded ------------------------------------------------------------------------------


def qwen2_pruned():
    """Qwen2 (q/k/v biases), whole KV groups removed per layer."""
    model = builders.qwen2(tied=False)
    model.config.head_dim = model.config.hidden_size // model.config.num_attention_heads  # for the pruning helper
    builders.prune_structurally(model, {0: (2, 1, 50), 2: (2, 1, 96), 3: (4, 2, 20)})
    return model


def qwen3_pruned():
    """Qwen3 (per-head q/k norms)."""
    model = builders.qwen3()
    builders.prune_structurally(model, {1: (2, 1, 64), 3: (2, 1, 30)})
    return model


@pytest.mark.parametrize("build", [llm_pruner_model, mixed_gqa_model, flap_model, qwen2_pruned, qwen3_pruned],
                         ids=["llm_pruner", "mixed_gqa", "flap", "qwen2", "qwen3"])
def test_hf_padded_is_exact(tmp_path, build, capsys):
    model = build()
    if build in (flap_model, qwen2_pruned, qwen3_pruned):
        model.save_pretrained(tmp_path / "source")
    else:
        save_pickle(model, tmp_path / "source")
    assert export(tmp_path / "source", "--to", "hf-padded", "--output", tmp_path / "out") == 0
    assert "no savings" in capsys.readouterr().out
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == \
        (model.config.num_attention_heads, model.config.num_key_value_heads)
    # Round trip: the padded shapes are the base's, and the content scan finds the source's heads and
    # channels alive in them.
    source = inspected(tmp_path / "source")
    padded = json.loads(subprocess.run([sys.executable, "-m", "prunescope", "inspect", str(tmp_path / "out"), "--json",
                                        "--sparsity", "--device", "cpu"], capture_output=True, text=True,
                                       check=True).stdout)
    assert [(layer["attention"]["effective_heads"], layer["mlp"]["effective_intermediate_size"])
            for layer in padded["layers"]] == \
        [(layer["attention"]["num_heads"], layer["mlp"]["intermediate_size"]) for layer in source["layers"]]


class NoAttention(nn.Module):
    """What is left of an attention block whose heads were all removed (FLAP can do this): nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class NoMlp(nn.Module):
    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def sublayers_removed_model():
    """Layer 0 without attention, layer 2 without its MLP (its attention still there), layer 3 without both."""
    model = flap_model({0: (2, 2, 40), 1: (3, 3, 60), 2: (1, 1, 96), 3: (4, 4, 10)})
    layers = model.model.layers
    layers[0].self_attn = NoAttention()
    layers[2].mlp = NoMlp()
    layers[3].self_attn, layers[3].mlp = NoAttention(), NoMlp()
    return model


def test_hf_padded_sublayers_removed(tmp_path):
    model = sublayers_removed_model()
    model.save_pretrained(tmp_path / "source")
    assert export(tmp_path / "source", "--to", "hf-padded", "--output", tmp_path / "out") == 0
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE


# -- --to gguf, run by llama.cpp -----------------------------------------------------------------


def llama_cpp_logits(path) -> torch.Tensor:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    # K and V cached in f32 (llama.cpp's default f16 cache alone costs ~3e-4): the comparison is fp32 throughout.
    model = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    model.eval(IDS[0])
    return torch.tensor(model.scores[: len(IDS[0])], dtype=torch.float32)


def gguf_field(path, key):
    import gguf

    return gguf.GGUFReader(str(path)).fields[key].contents()


@pytest.mark.parametrize("build", [llm_pruner_model, mixed_gqa_model, flap_model, sublayers_removed_model],
                         ids=["llm_pruner", "mixed_gqa", "flap", "sublayers_removed"])
def test_gguf_deci_runs_exactly_in_llama_cpp(tmp_path, build, capsys):
    model = build()
    if build in (flap_model, sublayers_removed_model):
        model.save_pretrained(tmp_path / "source")
    else:
        save_pickle(model, tmp_path / "source")
    assert export(tmp_path / "source", "--to", "gguf", "--output", tmp_path / "model.gguf") == 0
    out = capsys.readouterr().out
    assert "placeholder vocabulary of 128" in out
    assert gguf_field(tmp_path / "model.gguf", "general.architecture") == "deci"
    heads = [layer.self_attn.q_proj.out_features // 16 if hasattr(layer.self_attn, "q_proj") else 0
             for layer in model.model.layers]
    if build is sublayers_removed_model:
        assert "one all-zero head" in out and "one all-zero channel" in out
        heads[0] = 1  # the work-around for llama.cpp's layer 0
    elif build is not flap_model:
        heads = [layer.self_attn.q_proj.out_features // 8 for layer in model.model.layers]
    assert gguf_field(tmp_path / "model.gguf", "deci.attention.head_count") == heads
    assert relative_difference(llama_cpp_logits(tmp_path / "model.gguf"), logits_of(model)) <= TOLERANCE
    if build is not sublayers_removed_model:  # there, work-arounds add a head and a channel (and drop unused norms)
        assert shapes(inspected(tmp_path / "model.gguf")) == shapes(inspected(tmp_path / "source"))


def test_gguf_uniform_model_is_plain_llama(tmp_path):
    model = builders.llama()
    builders.prune_structurally(model, {index: (2, 1, 40) for index in range(4)})
    model.save_pretrained(tmp_path / "source")
    assert export(tmp_path / "source", "--to", "gguf", "--output", tmp_path / "model.gguf") == 0
    assert gguf_field(tmp_path / "model.gguf", "general.architecture") == "llama"
    assert relative_difference(llama_cpp_logits(tmp_path / "model.gguf"), logits_of(model)) <= TOLERANCE


def test_gguf_refuses_other_layouts_in_one_line(tmp_path, capsys):
    builders.gemma2().save_pretrained(tmp_path / "gemma2")
    capsys.readouterr()
    assert export(tmp_path / "gemma2", "--to", "gguf", "--output", tmp_path / "model.gguf") == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--to hf" in error
    assert not os.path.exists(tmp_path / "model.gguf")


def test_gguf_carries_the_hf_tokenizer(tmp_path, capsys):
    """A byte-level BPE tokenizer beside the model is written through gguf's vocab classes: llama.cpp
    then splits text into the ids the HF tokenizer gives."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tokenizer.train_from_iterator(["the pruned model runs in llama.cpp", "hello world, hello pruning"] * 20, trainer)
    model = builders.llama(vocab_size=300)
    builders.prune_structurally(model, {0: (2, 1, 40)})
    model.save_pretrained(tmp_path / "source")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(tmp_path / "source")
    assert export(tmp_path / "source", "--to", "gguf", "--output", tmp_path / "model.gguf") == 0
    assert "tokenizer from" in capsys.readouterr().out
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    runtime = llama_cpp.Llama(model_path=str(tmp_path / "model.gguf"), n_ctx=64, verbose=False, vocab_only=True)
    text = "hello world, the pruned model"
    assert runtime.tokenize(text.encode(), add_bos=False) == tokenizer.encode(text).ids


def test_quantized_gguf_is_counted_by_its_elements(tmp_path):
    """A GGUF whose matrices are Q8_0 (written by the gguf package's own quantizer) has the same
    structure as its F32 original: quantized types are counted by logical elements."""
    import gguf
    import numpy as np

    model = llm_pruner_model()
    save_pickle(model, tmp_path / "source")
    assert export(tmp_path / "source", "--to", "gguf", "--output", tmp_path / "f32.gguf") == 0
    original = gguf.GGUFReader(str(tmp_path / "f32.gguf"))
    writer = gguf.GGUFWriter(str(tmp_path / "q8.gguf"), "deci")
    for key, field in original.fields.items():
        if key.startswith(("deci.", "general.file_type")):
            value = field.contents()
            if isinstance(value, list):
                writer.add_array(key, value)
            elif isinstance(value, float):
                writer.add_float32(key, value)
            else:
                writer.add_uint32(key, value)
    writer.add_tokenizer_model("none")
    for tensor in original.tensors:
        values = np.array(tensor.data)
        if values.ndim == 2 and values.shape[1] % 32 == 0:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    quantized = inspected(tmp_path / "q8.gguf")
    assert shapes(quantized) == shapes(inspected(tmp_path / "source"))
    assert quantized["total_params"] == model.num_parameters()
    assert "Q8_0" in quantized["dtypes"]
    scan = subprocess.run([sys.executable, "-m", "prunescope", "inspect", str(tmp_path / "q8.gguf"), "--sparsity",
                           "--device", "cpu"], capture_output=True, text=True)
    assert scan.returncode == 1 and "cannot count the values of Q8_0" in scan.stderr


def test_hf_renumbers_layers_that_kept_their_numbers(tmp_path):
    """A state dict whose kept layers still carry their original numbers (0, 2, 3) is written 0, 1, 2."""
    model = builders.llama()
    state = {name: tensor for name, tensor in model.state_dict().items() if ".layers.1." not in name}
    builders.remove_layers(model, [1])
    (tmp_path / "source").mkdir()
    torch.save(state, tmp_path / "source" / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path / "source")
    assert export(tmp_path / "source", "--to", "hf", "--output", tmp_path / "out") == 0
    assert relative_difference(loaded_logits(tmp_path / "out"), logits_of(model)) <= TOLERANCE


def test_hf_dtype_bf16(tmp_path):
    """--dtype bf16 rounds as torch rounds: every weight equals the module's weight cast by torch."""
    model = builders.llama()
    builders.prune_structurally(model, {index: (2, 1, 40) for index in range(4)})
    save_pickle(model, tmp_path / "source")
    assert export(tmp_path / "source", "--to", "hf", "--output", tmp_path / "out", "--dtype", "bf16") == 0
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.bfloat16).eval()
    assert all(parameter.dtype == torch.bfloat16 for parameter in loaded.parameters())
    want = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, want[name]), name


def test_gguf_llama31_rope_scaling(tmp_path):
    """Llama 3.1's RoPE scaling becomes llama.cpp's rope_freqs factors (short, medium and long wavelengths
    all occur with these sizes)."""
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = builders.llama(rope_parameters=rope)
    builders.prune_structurally(model, {0: (4, 2, 50), 2: (2, 1, 96)})
    model.save_pretrained(tmp_path / "source")
    assert export(tmp_path / "source", "--to", "gguf", "--output", tmp_path / "model.gguf") == 0
    # rope_freqs is computed from the config: a buffer, not one of the model's parameters
    structure = inspected(tmp_path / "model.gguf")
    assert structure["total_params"] == model.num_parameters() and structure["buffers"] == ["rope_freqs.weight"]
    assert relative_difference(llama_cpp_logits(tmp_path / "model.gguf"), logits_of(model)) <= TOLERANCE


def test_analyze_batch_reads_a_gguf_export_beside_its_source(tmp_path):
    model = llm_pruner_model()
    save_pickle(model, tmp_path / "models" / "llm_pruner")
    (tmp_path / "models" / "llm_pruner_gguf").mkdir()
    assert export(tmp_path / "models" / "llm_pruner", "--to", "gguf",
                  "--output", tmp_path / "models" / "llm_pruner_gguf" / "model.gguf") == 0
    assert main(["analyze", "--models_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out")]) == 0
    structures = {name: json.loads((tmp_path / "models" / name / "analysis" / "model_structure.json").read_text())
                  for name in ("llm_pruner", "llm_pruner_gguf")}
    assert shapes(structures["llm_pruner_gguf"]) == shapes(structures["llm_pruner"])
    assert structures["llm_pruner_gguf"]["total_params"] == model.num_parameters()
