"""
How much does `prunescope analyze` cost on a real-sized checkpoint, and does it stay near the floor?

We build a Llama-3-8B-shaped Hugging Face checkpoint (real safetensors headers, real file sizes,
but the data is a sparse file hole, so ~16 GB "on disk" costs a few MB), then time, each in its own
subprocess:

     python    - `python -c pass`, for reference: the interpreter's own start-up
  a. bare      - a minimal python script that only parses the 4 safetensors headers (the floor)
  b. one       - python -m prunescope analyze --force on a folder holding one model
  c. batch     - the same on a folder holding N models (default 50)
  d. tf-meta   - transformers building the model on the meta device (accelerate's estimate-memory way)

For each we report whole-process CPU time (user+sys) and peak RSS of that child, median of a few runs,
and check the targets: one <= 2x bare CPU, batch <= 1.0 s CPU, peak RSS < 100 MB.

With --shape mixtral-8x7b the checkpoint is Mixtral-8x7B's (46.7B parameters, 19 shards, 8 experts
per layer written per expert as on the Hub): the same targets hold for Mixture-of-Experts files.

Usage:
    python benchmarks/bench_analyze.py [--shape llama-3-8b|mixtral-8x7b] [--models 50] [--repeat 10] [--keep] [--strict]
"""

import argparse
import importlib.util
import json
import os
import statistics
import struct
import subprocess
import sys

import common  # benchmarks/common.py: shared by both benchmarks

HERE = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# the checkpoint: Llama-3-8B, exactly as on the Hub (meta-llama/Meta-Llama-3-8B config.json)

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
# Mixtral-8x7B, exactly as on the Hub (mistralai/Mixtral-8x7B-v0.1 config.json)
MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1e6,
    "router_aux_loss_coef": 0.02,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
SHAPES = {"llama-3-8b": ("Llama-3-8B", CONFIG, common.llama_tensors),
          "mixtral-8x7b": ("Mixtral-8x7B", MIXTRAL_CONFIG, common.mixtral_tensors)}
BYTES_PER_PARAM = 2  # bf16
MAX_SHARD_BYTES = 5 * 10**9  # save_pretrained's long-standing default "5GB"; gives Llama-3-8B's 4 shards
NONZERO_PREFIX = b"\x3f" * 64  # real weights are nonzero: lets the zero-layer scan stop at its first read


def split_into_shards(tensors, max_bytes):
    """Greedy, in order, like huggingface_hub.split_torch_state_dict_into_shards."""
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = common.numel(shape) * BYTES_PER_PARAM
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    return shards


def write_safetensors(path, tensors):
    """A real safetensors header; the data is a hole except a few nonzero bytes at each tensor's start."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in sorted(tensors):  # safetensors lays data out by name (all one dtype here)
        nbytes = common.numel(shape) * BYTES_PER_PARAM
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to a multiple of 8
    data_start = 8 + len(raw)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, entry in header.items():
            if name != "__metadata__":
                f.seek(data_start + entry["data_offsets"][0])
                f.write(NONZERO_PREFIX)
        f.truncate(data_start + offset)  # full size, sparse: the rest reads as zeros, costs no disk


def build_shards(folder, tensors):
    """The shard files (4 for Llama-3-8B), written once; every model folder hardlinks them. Returns
    (shard names, index)."""
    os.makedirs(folder)
    shards = split_into_shards(tensors, MAX_SHARD_BYTES)
    names, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(folder, fname), shard)
        names.append(fname)
        weight_map.update((name, fname) for name, _ in shard)
    total_size = sum(common.numel(s) for _, s in tensors) * BYTES_PER_PARAM
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return names, index


def make_model(folder, shard_dir, shard_names, index, config):
    """One model folder: its own config.json and index (prunescope writes analysis/ into it),
    shards hardlinked to the one sparse copy (so 50 models cost no extra disk or build time)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    for name in shard_names:
        os.link(os.path.join(shard_dir, name), os.path.join(folder, name))


# -----------------------------------------------------------------------------
# the measured children

BARE_SCRIPT = '''
import json, os, sys
# the floor: open each shard, read its 8-byte length and JSON header, count parameters
folder = sys.argv[1]
total = 0
for name in sorted(os.listdir(folder)):
    if name.endswith(".safetensors"):
        with open(os.path.join(folder, name), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for key, t in header.items():
            if key != "__metadata__":
                p = 1
                for d in t["shape"]:
                    p *= d
                total += p
print(json.dumps({"total_params": total}))
'''

TF_META_SCRIPT = '''
import json, sys
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM
# accelerate estimate-memory's way: build the model from config on the meta device, count parameters
config = AutoConfig.from_pretrained(sys.argv[1])
with init_empty_weights():
    model = AutoModelForCausalLM.from_config(config)
total = sum(p.numel() for p in model.parameters())
print(json.dumps({"total_params": total, "num_parameters": model.num_parameters()}))
'''


def measure(label, cmd, repeat, root, env=None):
    """Median CPU seconds (user+sys) and peak RSS (MB) of `cmd` over `repeat` runs, plus its last output."""
    runs, out = common.measure(root, cmd, warmup=1, repeat=repeat, env=env)  # run 0 warms caches
    cpu = statistics.median(r[1] for r in runs)
    rss = statistics.median(r[2] for r in runs)
    print(f"  {label:<10} cpu {cpu:8.3f} s   peak {rss:7.1f} MB   (runs: {', '.join(f'{r[1]:.3f}' for r in runs)})")
    return {"cpu": cpu, "rss": rss, "out": out}


# -----------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llama-3-8b", help="the checkpoint's shape")
    parser.add_argument("--models", type=int, default=50, help="models in the batch (default 50)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement, median kept (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints and outputs")
    parser.add_argument("--strict", action="store_true", help="exit nonzero if a target is missed")
    args = parser.parse_args()

    common.run_in_data_dir("bench-", run, args)


def run(args, root):
    # build the data
    label, config, tensors_of = SHAPES[args.shape]
    tensors = tensors_of(config)
    shard_dir = os.path.join(root, "shards")
    shard_names, index = build_shards(shard_dir, tensors)
    one_dir, batch_dir = os.path.join(root, "one"), os.path.join(root, "batch")
    one_model = os.path.join(one_dir, args.shape)
    make_model(one_model, shard_dir, shard_names, index, config)
    for k in range(args.models):
        make_model(os.path.join(batch_dir, f"{args.shape}-{k:03d}"), shard_dir, shard_names, index, config)
    expected = sum(common.numel(s) for _, s in tensors)
    sizes = [os.path.getsize(os.path.join(shard_dir, n)) for n in shard_names]
    on_disk = sum(os.stat(os.path.join(shard_dir, n)).st_blocks * 512 for n in shard_names)
    print(f"checkpoint: {label} shape, {expected:,} parameters, {len(sizes)} shards "
          f"({', '.join(f'{s / 1e9:.2f}' for s in sizes)} GB; {on_disk / 2**20:.1f} MB actually on disk)")
    print(f"batch: {args.models} model folders, shards hardlinked; {args.repeat} timed runs each (median)")
    print(f"prunescope measured: {os.path.dirname(importlib.util.find_spec('prunescope').origin)}")
    print()

    # measure: the helper scripts are written next to the data, each child run through runner.py
    scripts = os.path.join(root, "scripts")
    os.makedirs(scripts)
    common.write_runner(root)
    for name, text in [("bare.py", BARE_SCRIPT), ("tf_meta.py", TF_META_SCRIPT)]:
        with open(os.path.join(scripts, name), "w") as f:
            f.write(text)
    py = sys.executable
    # The `prunescope` console script, as users run it (`python -m` would add runpy's own imports);
    # --force: re-analyse on every run.
    script = os.path.join(os.path.dirname(py), "prunescope")
    entry = [py, script] if os.path.isfile(script) else [py, "-m", "prunescope"]
    prunescope = entry + ["analyze", "--force"]
    # Measure the steady state of an installed tool: bytecode cached. An editable install has no .pyc
    # until a first run writes them, and PYTHONDONTWRITEBYTECODE (set in some sandboxes and CI) would
    # make every run recompile prunescope from source. So these children get a .pyc cache of their
    # own under the temp dir (filled by the uncounted warm-up run) and nothing is written into src/.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(root, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # fill that cache for the runner itself once: compiling raises its RSS, which would become the
    # floor of its children's ru_maxrss (see runner.py)
    subprocess.run([py, os.path.join(scripts, "runner.py"), os.path.join(root, "child.log"), "1", "0", py, "-c", "pass"],
                   env=env, check=True, capture_output=True)

    m = {}
    m["python"] = measure("python", [py, "-c", "pass"], args.repeat, root, env)  # reference: interpreter start-up
    m["bare"] = measure("bare", [py, os.path.join(scripts, "bare.py"), one_model], args.repeat, root, env)
    m["one"] = measure("one", prunescope + ["--models_dir", one_dir, "--output_dir", os.path.join(root, "out_one")],
                       args.repeat, root, env)
    m["batch"] = measure(f"batch-{args.models}", prunescope + ["--models_dir", batch_dir,
                         "--output_dir", os.path.join(root, "out_batch")], args.repeat, root, env)
    # find_spec, not import: importing torch here would cost seconds for a yes/no answer
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("accelerate"):
        # slow (imports torch): fewer runs are enough for a number that only sets the scale. Default
        # environment: pip already compiled torch/transformers' .pyc (a fresh cache would cost ~15 s)
        m["tf"] = measure("tf-meta", [py, os.path.join(scripts, "tf_meta.py"), one_model], min(args.repeat, 3), root)
    else:
        print("  tf-meta    skipped: transformers/accelerate not importable")

    # correctness in passing: every count must equal the one computed from the shapes we wrote
    print()
    with open(os.path.join(one_model, "analysis", "model_structure.json")) as f:
        structure = json.load(f)
    with open(os.path.join(root, "out_batch", "batch_analysis_results.json")) as f:
        batch = json.load(f)
    checks = [
        (f"bare script total_params == {expected:,}", common.last_json_line(m["bare"]["out"])["total_params"] == expected),
        (f"prunescope model_structure.json total_params == {expected:,}", structure["total_params"] == expected),
        ("prunescope: 32 layers, none flagged all-zero",
         len(structure["layers"]) == 32 and not any(layer["is_zero_layer"] for layer in structure["layers"])),
        *([("prunescope: 8 experts in every layer, active_params = total - 6 experts per layer",
            structure["num_experts"] == [8] * 32 and structure["active_params"] == expected - 32 * 6 * 3 * 4096 * 14336)]
          if args.shape == "mixtral-8x7b" else []),
        (f"prunescope batch: {args.models} models analysed (not reused), each total_params == {expected:,}",
         len(batch["models"]) == args.models and all(
             r["status"] == "analysed" and not r["reused"] and r["total_params"] == expected for r in batch["models"])),
    ]
    if "tf" in m:
        tf = common.last_json_line(m["tf"]["out"])
        checks.append((f"transformers meta sum(numel) == num_parameters() == {expected:,}",
                       tf["total_params"] == expected and tf["num_parameters"] == expected))
    for what, ok in checks:
        print(f"  {'ok ' if ok else 'BAD'}  {what}")

    # table
    print()
    rows = [("measurement", "CPU s", "peak MB")]
    names = {"python": "   python -c pass (reference)", "bare": "a. bare header script",
             "one": "b. prunescope, 1 model",
             "batch": f"c. prunescope, {args.models} models", "tf": "d. transformers meta, 1 model"}
    for key, r in m.items():
        rows.append((names[key], f"{r['cpu']:.3f}", f"{r['rss']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for n, row in enumerate(rows):
        print(f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")
        if n == 0:
            print("  " + "-" * (sum(widths) + 4))
    print()
    print(f"  prunescope(one) / bare            {m['one']['cpu'] / m['bare']['cpu']:6.2f}x CPU")
    if "tf" in m:
        print(f"  prunescope(one) / transformers    {m['one']['cpu'] / m['tf']['cpu']:6.3f}x CPU "
              f"({m['tf']['cpu'] / m['one']['cpu']:.0f}x faster)")
    print(f"  prunescope batch of {args.models}            {m['batch']['cpu']:6.3f} s CPU "
          f"({1000 * m['batch']['cpu'] / args.models:.1f} ms/model incl. start-up)")

    # targets
    print()
    peak = max(m["one"]["rss"], m["batch"]["rss"])
    targets = [
        ("one-model CPU <= 2x bare script", m["one"]["cpu"] <= 2 * m["bare"]["cpu"],
         f"{m['one']['cpu']:.3f} s vs 2 x {m['bare']['cpu']:.3f} s"),
        (f"batch of {args.models} <= 1.0 s CPU", m["batch"]["cpu"] <= 1.0, f"{m['batch']['cpu']:.3f} s"),
        ("prunescope peak RSS < 100 MB", peak < 100, f"{peak:.1f} MB"),
    ]
    for what, ok, detail in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {what:<34} ({detail})")
    return not all(ok for _, ok, _ in targets) or not all(ok for _, ok in checks)


if __name__ == "__main__":
    main()
