"""
prunescope's FLOPs (from the files' shapes, nothing loaded) beside the counters people run on a loaded model.

For a few tiny models built with transformers (a GQA Llama, the same pruned per layer, Qwen2 with biases,
OPT with LayerNorm and ReLU, Phi-2, Mistral with a sliding window), at one prefill length S:

  prunescope     `prunescope inspect --json --seq_len S` on the saved folder (a subprocess: header only)
  FlopCounterMode torch.utils.flop_counter on a real forward, attn_implementation="eager" (the reference)
  FCM sdpa       the same with CPU "sdpa": the attention core is not counted (an unregistered kernel)
  calflops       calflops.calculate_flops on the eager model (its FLOPs and its MACs)
  fvcore         fvcore.nn.FlopCountAnalysis on the eager model (its "flops" are MACs)

and checks, to the unit, the relations README ("Compute and memory: other counters") explains:
prunescope == FlopCounterMode (eager); calflops MACs == FlopCounterMode / 2; fvcore == FlopCounterMode / 2
+ 5 x LayerNorm elements (OPT, Phi-2); FCM sdpa == FlopCounterMode - attention core. calflops FLOPs exceed
2 x its MACs by its elementwise estimates (softmax, activations, LayerNorm), which is printed, not checked.
A counter that is not installed (pip install calflops fvcore) is reported as such and skipped.

Usage:
    python benchmarks/bench_compute.py [--seq_len 128]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def build_models():
    """name -> a transformers model (random weights, float32)."""
    import torch
    from torch import nn
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, OPTConfig,
                              OPTForCausalLM, PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    small = dict(hidden_size=128, intermediate_size=344, num_attention_heads=8, num_key_value_heads=2,
                 num_hidden_layers=4, vocab_size=512, max_position_embeddings=512)
    models = {"llama_gqa": LlamaForCausalLM(LlamaConfig(**small))}
    pruned = LlamaForCausalLM(LlamaConfig(**small))
    for layer, (heads, kv_heads, inter) in zip(pruned.model.layers[1:3], ((4, 1, 200), (6, 2, 100))):
        attention, mlp = layer.self_attn, layer.mlp
        hd = attention.head_dim

        def resized(linear, out=None, inp=None):
            new = nn.Linear(inp or linear.in_features, out or linear.out_features, bias=linear.bias is not None)
            with torch.no_grad():
                new.weight.copy_(linear.weight[:new.out_features, :new.in_features])
            return new

        attention.q_proj = resized(attention.q_proj, out=heads * hd)
        attention.k_proj = resized(attention.k_proj, out=kv_heads * hd)
        attention.v_proj = resized(attention.v_proj, out=kv_heads * hd)
        attention.o_proj = resized(attention.o_proj, inp=heads * hd)
        attention.num_key_value_groups = heads // kv_heads
        mlp.gate_proj, mlp.up_proj = resized(mlp.gate_proj, out=inter), resized(mlp.up_proj, out=inter)
        mlp.down_proj = resized(mlp.down_proj, inp=inter)
    models["llama_pruned"] = pruned
    models["qwen2_bias"] = Qwen2ForCausalLM(Qwen2Config(**small))
    models["mistral_window64"] = MistralForCausalLM(MistralConfig(**small, sliding_window=64))
    models["opt"] = OPTForCausalLM(OPTConfig(hidden_size=128, ffn_dim=512, num_attention_heads=8, num_hidden_layers=4,
                                             vocab_size=512, max_position_embeddings=512, word_embed_proj_dim=128))
    models["phi2"] = PhiForCausalLM(PhiConfig(hidden_size=128, intermediate_size=512, num_attention_heads=8,
                                              num_hidden_layers=4, vocab_size=512, pad_token_id=0, bos_token_id=0,
                                              eos_token_id=0))
    return {name: model.eval() for name, model in models.items()}


def flop_counter(model, ids, implementation):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.config._attn_implementation = implementation
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids, use_cache=False)
    model.config._attn_implementation = "eager"
    return counter.get_total_flops()


def calflops_counts(model, ids):
    from calflops import calculate_flops

    with contextlib.redirect_stdout(io.StringIO()):
        flops, macs, _ = calculate_flops(model=model, kwargs={"input_ids": ids},
                                         print_results=False, print_detailed=False, output_as_string=False)
    return int(flops), int(macs)


def fvcore_count(model, ids):
    import torch
    from fvcore.nn import FlopCountAnalysis

    class Logits(torch.nn.Module):  # fvcore traces with the JIT: a plain tensor out, no cache
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids, use_cache=False).logits

    analysis = FlopCountAnalysis(Logits(model), (ids,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return int(analysis.total())


def layer_norm_elements(model, seq_len):
    """Elements LayerNorm modules normalise in one forward (fvcore counts 5 per element for them)."""
    import torch

    return sum(seq_len * module.normalized_shape[0] for module in model.modules()
               if isinstance(module, torch.nn.LayerNorm))


def prunescope_figures(folder, seq_len):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "prunescope", "inspect", folder, "--json", "--seq_len", str(seq_len)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, check=True)
    return json.loads(result.stdout)["compute"], time.perf_counter() - started


def available(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_len", type=int, default=128)
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    counters = {name: available(name) for name in ("calflops", "fvcore")}
    for name, present in counters.items():
        if not present:
            print(f"note: {name} is not installed: its column is skipped (pip install {name})")
    S = args.seq_len
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in build_models().items():
            path = os.path.join(folder, name)
            model.save_pretrained(path)
            ours, seconds = prunescope_figures(path, S)
            ids = torch.randint(0, model.config.vocab_size, (1, S))
            started = time.perf_counter()
            eager = flop_counter(model, ids, "eager")
            forward_seconds = time.perf_counter() - started
            sdpa = flop_counter(model, ids, "sdpa")
            row = {"model": name, "prunescope": ours["prefill_flops"], "fcm_eager": eager, "fcm_sdpa": sdpa,
                   "prunescope_s": seconds, "forward_s": forward_seconds}
            checks = [("prunescope == FlopCounterMode eager", ours["prefill_flops"], eager),
                      ("FCM sdpa == eager - attention core", sdpa, eager - ours["prefill"]["attention_core"])]
            if counters["calflops"]:
                row["calflops_flops"], row["calflops_macs"] = calflops_counts(model, ids)
                checks.append(("calflops MACs == FCM eager / 2", row["calflops_macs"], eager // 2))
            if counters["fvcore"]:
                row["fvcore"] = fvcore_count(model, ids)
                checks.append(("fvcore == FCM eager / 2 + 5 x LayerNorm elements", row["fvcore"],
                               eager // 2 + 5 * layer_norm_elements(model, S)))
            for what, got, want in checks:
                if got != want:
                    failures.append(f"{name}: {what}: {got:,} != {want:,}")
            rows.append(row)
    header = ["model", "prunescope FLOPs", "FCM eager", "FCM sdpa (CPU)", "calflops FLOPs", "calflops MACs",
              "fvcore (MACs)", "calflops extra"]
    table = [header]
    for row in rows:
        extra = row["calflops_flops"] - 2 * row["calflops_macs"] if "calflops_flops" in row else None
        table.append([row["model"], f"{row['prunescope']:,}", f"{row['fcm_eager']:,}", f"{row['fcm_sdpa']:,}",
                      f"{row['calflops_flops']:,}" if "calflops_flops" in row else "-",
                      f"{row['calflops_macs']:,}" if "calflops_macs" in row else "-",
                      f"{row['fvcore']:,}" if "fvcore" in row else "-",
                      f"+{extra:,} ({extra / row['calflops_flops'] * 100:.2f}%)" if extra is not None else "-"])
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    print(f"\nPrefill of S = {S} tokens, batch 1 (calflops extra: its FLOPs - 2 x its MACs, elementwise estimates)\n")
    for number, line in enumerate(table):
        print("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(line, widths))))
        if number == 0:
            print("  ".join("-" * width for width in widths))
    print("\nprunescope read the saved files in a subprocess (start-up included): "
          + ", ".join(f"{row['model']} {row['prunescope_s']:.2f} s" for row in rows))
    print()
    if failures:
        for failure in failures:
            print(f"FAIL  {failure}")
        return 1
    print("PASS  every relation holds to the unit (README: Compute and memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
