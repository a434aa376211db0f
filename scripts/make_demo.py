"""Regenerate the bundled demo models in src/prunescope/demo_data/ (needs torch and transformers).

    python scripts/make_demo.py

The demo is a miniature of a real pruning study: a base Llama and variants made the way each
method leaves them on disk. Random weights; the structure is what matters.
"""

import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import builders  # noqa: E402  (the same pruning helpers the tests use)
from oracle import zero_layer_  # noqa: E402

TARGET = os.path.join(os.path.dirname(__file__), "..", "src", "prunescope", "demo_data")
SHAPE = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             num_hidden_layers=6, vocab_size=128, max_position_embeddings=64)


def copy_of(base):
    model = builders.llama(**SHAPE).to(torch.bfloat16)
    model.load_state_dict(base.state_dict())
    return model


def main():
    torch.manual_seed(0)
    shutil.rmtree(TARGET, ignore_errors=True)
    base = builders.llama(**SHAPE).to(torch.bfloat16)
    base.save_pretrained(os.path.join(TARGET, "base", "Llama-demo"))

    models = os.path.join(TARGET, "models")
    # Unstructured: magnitude pruning, 50% of each linear's smallest weights set to zero, shapes unchanged.
    magnitude = copy_of(base)
    with torch.no_grad():
        for name, parameter in magnitude.named_parameters():
            if name.endswith("proj.weight"):
                parameter[parameter.abs() <= parameter.abs().float().median()] = 0
    magnitude.save_pretrained(os.path.join(models, "Magnitude_5000", "pruned_model"))

    # Depth: ShortGPT removed two layers; the config still says 6.
    shortgpt = copy_of(base)
    builders.remove_layers(shortgpt, [2, 4])
    shortgpt.save_pretrained(os.path.join(models, "ShortGPT_remove_2"))

    # A layer zeroed in place (shapes unchanged, one layer all zeros).
    zeroed = copy_of(base)
    zero_layer_(zeroed.model.layers[3])
    zeroed.save_pretrained(os.path.join(models, "ZeroLayer_3"))

    # Structural: LLM-Pruner pickles the whole pruned module with a stale config, fp16.
    pruner = copy_of(base)
    builders.prune_structurally(pruner, {1: (2, 1, 64), 2: (3, 2, 48), 3: (2, 1, 64), 4: (3, 1, 80)})
    log = os.path.join(models, "LLM-Pruner_block_20", "prune_log", "llama_prune")
    os.makedirs(log)
    torch.save({"model": pruner.half(), "tokenizer": None}, os.path.join(log, "pytorch_model.bin"))
    with open(os.path.join(log, "description.txt"), "w") as handle:
        handle.write("LLM-Pruner block-wise pruning of layers 1-4 (demo)\n")

    # The base model's evaluation results, with no model files: the batch skips it.
    results = os.path.join(models, "Llama-demo-eval")
    os.makedirs(results)
    with open(os.path.join(results, "results_2026-11-01T10-00-00.json"), "w") as handle:
        json.dump({"results": {"piqa": {"acc,none": 0.61, "acc_norm,none": 0.62},
                               "arc_easy": {"acc,none": 0.43, "acc_norm,none": 0.41}}}, handle, indent=2)
    # Evaluation results beside some variants (lm-evaluation-harness layout; invented numbers: the demo's
    # weights are random), so that the report can join accuracy with structure.
    for folder, scores in (("Magnitude_5000", (0.58, 0.40)), ("ShortGPT_remove_2", (0.55, 0.36)),
                           ("LLM-Pruner_block_20", (0.57, 0.38))):
        with open(os.path.join(models, folder, "results_2026-11-02T10-00-00.json"), "w") as handle:
            json.dump({"results": {"piqa": {"acc,none": scores[0] - 0.01, "acc_norm,none": scores[0]},
                                   "arc_easy": {"acc,none": scores[1] + 0.01, "acc_norm,none": scores[1]}}},
                      handle, indent=2)
    make_moe_demo()
    for root, _, files in os.walk(TARGET):
        for name in files:
            if name == "generation_config.json":
                os.unlink(os.path.join(root, name))
    print("demo written to", os.path.abspath(TARGET))


MOE_SHAPE = dict(hidden_size=32, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=3, vocab_size=64, max_position_embeddings=64, num_local_experts=8,
                 num_experts_per_tok=2)


def make_moe_demo():
    """A second, Mixture-of-Experts study: a base Mixtral and the same model with experts removed per
    layer (8 -> 6/8/4, router rows removed with them, num_local_experts left stale), written per expert
    as save_pretrained does."""
    from transformers import MixtralConfig, MixtralForCausalLM

    base = MixtralForCausalLM(MixtralConfig(**MOE_SHAPE)).to(torch.bfloat16).eval()
    base.save_pretrained(os.path.join(TARGET, "moe", "base", "Mixtral-demo"))
    pruned = MixtralForCausalLM(MixtralConfig(**MOE_SHAPE)).to(torch.bfloat16).eval()
    pruned.load_state_dict(base.state_dict())
    builders.remove_experts(pruned, {0: [0, 1, 2, 4, 5, 7], 2: [1, 3, 6, 7]})
    with torch.no_grad():
        pruned(torch.tensor([[1, 2, 3]]), use_cache=False)  # still runs
    pruned.save_pretrained(os.path.join(TARGET, "moe", "models", "Mixtral-experts_6-8-4"))


if __name__ == "__main__":
    main()
