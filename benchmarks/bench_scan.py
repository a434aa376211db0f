"""
How fast is the content scan (`--sparsity`) on the CPU, next to simply reading the same bytes?

We build a TinyLlama-1.1B-shaped bf16 checkpoint (~2.2 GB, 2 safetensors shards + index) full of
real bytes: linear weights that are dense in some layers, 50% magnitude-pruned in others, 2:4 in
others (with the -0.0 values that `W * mask` leaves), dense embeddings and norms. With the files in
the page cache, each measurement runs in its own subprocess and times its work in-process (imports
excluded), several times (a. and b. in the same process, alternating, so that they see the same machine):

  a. plain read  - a single-threaded sequential `readinto` of the shards into a reused 16 MB buffer (the floor)
  b. scan        - prunescope's `scan_tensors(..., device="cpu")` with the compiled kernel, all cores (and,
                   for scale, 1 worker; and numpy's passes, the fallback, on all cores)
  c. wanda       - `safetensors.torch.load_file` of the shards, then `(W == 0).sum()` per linear weight
                   (the way Wanda's `check_sparsity` counts)
  d. cli         - the whole `prunescope inspect <dir> --sparsity --device cpu`, wall time (imports included);
                   it picks its engine as users get it: below 4 GiB (scan.KERNEL_MIN_BYTES) numpy, numba unloaded
  e. ray         - `scan_tensors_ray` (--executor ray) on a local Ray cluster with as many CPUs as cores:
                   units of a whole shard each here (files under 2 GiB), counted by Ray workers; timed
                   after a first scan that starts the workers. Also the cost of one unit that reads
                   nothing worth counting (a norm vector): the overhead per unit. Skipped without Ray.

and reports GB/s (bytes of tensor data / seconds) and peak RSS, checks the target
"scan >= 80% of the plain read's throughput", and checks that the scan's per-tensor nonzero counts
equal torch's `(W != 0).sum()`.

Usage:
    python benchmarks/bench_scan.py [--size-gb 2.2] [--repeat 5] [--keep] [--strict]
"""

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import common  # benchmarks/common.py: shared by both benchmarks

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.80  # scan throughput / plain read throughput

# -----------------------------------------------------------------------------
# the checkpoint: TinyLlama-1.1B's shape (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json);
# only num_hidden_layers changes with --size-gb

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 22,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
BYTES_PER_PARAM = 2  # bf16
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
POOL_NUMEL = 32 << 20  # 64 MB of bf16 per value pool (see make_pools)
FILL_NUMEL = 4 << 20  # tensors are filled from the pools this many elements at a time


def layers_for(size_gb):
    """The layer count that brings the checkpoint closest to `size_gb` (at least 1 layer)."""
    one = dict(CONFIG, num_hidden_layers=1)
    two = dict(CONFIG, num_hidden_layers=2)
    fixed_and_one = sum(common.numel(s) for _, s in common.llama_tensors(one)) * BYTES_PER_PARAM
    per_layer = sum(common.numel(s) for _, s in common.llama_tensors(two)) * BYTES_PER_PARAM - fixed_and_one
    return max(1, round((size_gb * 1e9 - fixed_and_one) / per_layer) + 1)


def pruning_of(name):
    """Which pattern a tensor gets: linear weights of layer n are dense (n % 3 == 0), 50% unstructured
    (n % 3 == 1) or 2:4 (n % 3 == 2); embeddings, lm_head and norms stay dense."""
    if not name.startswith("model.layers.") or name.split(".")[-2] not in LINEAR:
        return "dense"
    return ("dense", "unstructured", "2:4")[int(name.split(".")[2]) % 3]


def make_pools(torch):
    """Three pools of real bf16 weights, N(0, 0.02): dense, 50% magnitude-pruned, 2:4 magnitude-pruned.

    Drawing 1.1 G normal values with torch costs ~30 s on 2 cores, and ranking every group of 4 for 2:4
    costs more, so each pool is made once (~64 MB each) and tensors are filled with slices of it at random
    offsets (fill_tensor). The bytes on disk are real and varied; the patterns are genuine: every zero
    comes from a magnitude threshold, and `W * mask` leaves -0.0 wherever a negative weight was pruned
    (about half the zeros), as it does in real pruned checkpoints."""
    torch.manual_seed(0)
    w = torch.randn(POOL_NUMEL) * 0.02
    dense = w.to(torch.bfloat16)
    # 50% unstructured: |w| below the median of |N(0, s)| (0.6745 s) is pruned
    unstructured = (w * (w.abs() > 0.6745 * 0.02)).to(torch.bfloat16)
    # 2:4: in every group of 4 consecutive weights keep the 2 largest magnitudes
    groups = w.view(-1, 4)
    magnitude = groups.abs()
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, magnitude.topk(2, dim=1).indices, True)
    nm = (groups * keep).view(-1).to(torch.bfloat16)  # topk, not a threshold: ties would keep 3 of 4
    return {"dense": dense, "unstructured": unstructured, "2:4": nm}


def fill_tensor(torch, pool, shape, rng):
    """A new bf16 tensor of `shape`, filled FILL_NUMEL elements at a time from random places in `pool`.
    Offsets are multiples of 64, so groups of 4 stay aligned with the rows (widths are multiples of 4)."""
    n = common.numel(shape)
    out = torch.empty(n, dtype=torch.bfloat16)
    for start in range(0, n, FILL_NUMEL):
        k = min(FILL_NUMEL, n - start)
        offset = rng.randrange(0, (pool.numel() - k) // 64 + 1) * 64
        out[start:start + k] = pool[offset:offset + k]
    return out.view(shape)


def build_checkpoint(folder, config):
    """config.json, 2 safetensors shards written with the safetensors library, and the shard index.
    Shard by shard, so the peak memory is about one shard (~1.1 GB) plus the pools, not the model."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors = common.llama_tensors(config)
    total = sum(common.numel(s) for _, s in tensors) * BYTES_PER_PARAM
    # split in state_dict order where the first half of the bytes ends (save_pretrained splits greedily
    # by a size limit; with a limit of half the model, it gives the same two shards)
    shards, current, size = [], [], 0
    for name, shape in tensors:
        if current and not shards and size + common.numel(shape) * BYTES_PER_PARAM > total / 2:
            shards.append(current)
            current = []
        current.append((name, shape))
        size += common.numel(shape) * BYTES_PER_PARAM
    shards.append(current)

    pools, rng = make_pools(torch), random.Random(0)
    weight_map, files = {}, []
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        state = {name: fill_tensor(torch, pools[pruning_of(name)], shape, rng) for name, shape in shard}
        save_file(state, os.path.join(folder, fname), metadata={"format": "pt"})
        del state
        weight_map.update((name, fname) for name, _ in shard)
        files.append(os.path.join(folder, fname))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    return files, total


# -----------------------------------------------------------------------------
# the measured children: each prints one JSON line; runner.py adds its wall time and peak RSS

# Each child prints one JSON line: "times" (seconds per timed run), "cpu" (CPU seconds per run, to see how
# many cores the run really had) and "rss_mb", its peak RSS after its imports, before the measured work
# (the base of the RSS delta).

SCAN_SCRIPT = '''
import json, resource, sys, time
import numpy  # imported here, not by the first scan, so the timings exclude it
from prunescope.readers import read_tensor_index
from prunescope.measure.scan import scan_tensors
repeat, workers, with_plain, engine, index, files = int(sys.argv[1]), int(sys.argv[2]) or None, \
    sys.argv[3] == "1", sys.argv[4], sys.argv[5], sys.argv[6:]
tensors = list(read_tensor_index([index]).tensors)
# the compiled kernel's one-time cost (KERNEL_SCRIPT measures it) is kept out of the timed runs
from prunescope.measure.scan import compiled_kernel
kernel = compiled_kernel() if engine == "numba" else None
if kernel is not None:
    kernel.count(numpy.zeros((1, 64), dtype=numpy.uint16), True)
# a. the floor: one thread, sequential reads of every shard into one reused 16 MB buffer. It runs here,
# alternating with the scan, so that both see the same machine: load from elsewhere skews both alike.
view = memoryview(bytearray(16 << 20))
with open(files[0], "rb", buffering=0) as f:
    f.readinto(view)  # touch the buffer now, so that the scan's RSS delta below does not count it

def plain_read():
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {"rss_mb": rss, "plain": {"times": [], "cpu": []}, "scan": {"times": [], "cpu": []}}
for _ in range(repeat):
    for key in ("plain", "scan") if with_plain else ("scan",):
        start, start_cpu = time.perf_counter(), cpu()
        if key == "plain":
            plain_read()
        else:
            contents = scan_tensors(tensors, device="cpu", workers=workers, progress=None,
                                    engine=engine if kernel is not None else "numpy")
        result[key]["times"].append(time.perf_counter() - start)
        result[key]["cpu"].append(cpu() - start_cpu)
result["nonzero"] = {name: c.nonzero for name, c in contents.items()}
result["nm24"] = {name: c.nm_groups["2:4"] for name, c in contents.items() if "2:4" in c.nm_groups}
print(json.dumps(result))
'''

KERNEL_SCRIPT = '''
import json, time
import numpy
# What a process pays before its first compiled count: importing numba, then loading the kernel's loops
# from numba's cache (compiling them when the cache is empty) at their first call, for bf16 and fp32 rows.
start = time.perf_counter()
from prunescope.measure.scan import compiled_kernel
kernel = compiled_kernel()
for dtype in (numpy.uint16, numpy.uint32):
    kernel.count(numpy.zeros((1, 64), dtype=dtype), True)
print(json.dumps({"seconds": time.perf_counter() - start}))
'''

RAY_SCRIPT = '''
import json, logging, os, statistics, sys, time
import numpy, ray
from prunescope.readers import read_tensor_index
from prunescope.measure.scan_ray import job_runtime_env, scan_tensors_ray
from prunescope.measure.scan_units import plan_units
repeat, index = int(sys.argv[1]), sys.argv[2]
tensors = list(read_tensor_index([index]).tensors)
# a local cluster as `--executor ray` starts it (scan_ray.connect), with one CPU per core
start = time.perf_counter()
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=job_runtime_env(),
         logging_level=logging.WARNING)
started = time.perf_counter() - start
start = time.perf_counter()
scan_tensors_ray(tensors)  # not in the timed runs: starts the workers, which import numba and load the kernel
first_scan = time.perf_counter() - start
times = []
for _ in range(repeat):
    start = time.perf_counter()
    contents = scan_tensors_ray(tensors)
    times.append(time.perf_counter() - start)
# the overhead of one unit: plan, probe task, unit task, merge, for a 4 KB norm vector
vector = [t for t in tensors if len(t.shape) == 1][:1]
small = []
for _ in range(20):
    start = time.perf_counter()
    scan_tensors_ray(vector)
    small.append(time.perf_counter() - start)
ray.shutdown()
# the workers' CPU is not this process's: "cpu" is left out
print(json.dumps({"ray": {"times": times, "cpu": None}, "rss_mb": None, "units": len(plan_units(tensors)),
                  "unit_overhead_s": statistics.median(small), "start_s": started, "first_scan_s": first_scan,
                  "nonzero": {name: c.nonzero for name, c in contents.items()}}))
'''

WANDA_SCRIPT = '''
import json, resource, sys, time
import torch
from safetensors.torch import load_file
# Wanda's check_sparsity: the model in memory, then (W == 0).sum() for every nn.Linear of every decoder
# layer. The whole model is loaded, so its memory grows with the model.
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
repeat, files = int(sys.argv[1]), sys.argv[2:]

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times, cpus = [], []
for _ in range(repeat):
    start, start_cpu = time.perf_counter(), cpu()
    state = {}
    for path in files:
        state.update(load_file(path))
    zeros = total = 0
    for name, w in state.items():
        if name.startswith("model.layers.") and name.split(".")[-2] in LINEAR:
            zeros += (w == 0).sum().item()
            total += w.numel()
    times.append(time.perf_counter() - start)
    cpus.append(cpu() - start_cpu)
    if len(times) < repeat:
        del state
# for the correctness check, not timed: torch's own nonzero count of every tensor (-0.0 == 0 is true in
# torch), and how many -0.0 (bits 0x8000) the checkpoint holds
nonzero = {name: int((w != 0).sum()) for name, w in state.items()}
negative_zeros = sum(int((w.view(torch.int16) == -32768).sum()) for w in state.values())
print(json.dumps({"wanda": {"times": times, "cpu": cpus}, "rss_mb": rss, "linear_sparsity": zeros / total,
                  "nonzero": nonzero, "negative_zeros": negative_zeros}))
'''


def read_all(files):
    """Read every byte once, so that every measurement finds the files in the page cache."""
    buffer = memoryview(bytearray(16 << 20))
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def idle_cores(seconds=1.0):
    """How many cores sat idle over `seconds` (Linux /proc/stat), or None: other load shows up here."""
    def idle_and_total():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all
    try:
        idle0, total0 = idle_and_total()
        time.sleep(seconds)
        idle1, total1 = idle_and_total()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(1, total1 - total0) * os.cpu_count()


# -----------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.2,
                        help="approximate checkpoint size; sets the layer count (default 2.2: TinyLlama's 22 layers)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per measurement, median kept (default 5; 3 at most for the other rows)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    parser.add_argument("--strict", action="store_true", help="exit nonzero if the target is missed or a check fails")
    args = parser.parse_args()
    for module in ("torch", "safetensors", "numpy"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"{module} is needed to build the checkpoint and measure torch's counts")

    common.run_in_data_dir("bench-scan-", run, args)


def run(args, root):
    # build the data in a child process: torch stays out of this one, which spawns the measured ones
    config = dict(CONFIG, num_hidden_layers=layers_for(args.size_gb))
    model = os.path.join(root, "tinyllama-shaped")
    start = time.perf_counter()
    build = subprocess.run([sys.executable, __file__, "--_build", model, json.dumps(config)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"building the checkpoint failed:\n{build.stderr}")
    built = time.perf_counter() - start
    build_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the only child so far
    files, data_bytes = json.loads(build.stdout)
    index = os.path.join(model, "model.safetensors.index.json")
    print(f"checkpoint: TinyLlama-1.1B shape with {config['num_hidden_layers']} layers, bf16, "
          f"{data_bytes / 1e9:.2f} GB of tensor data in {len(files)} shards "
          f"({', '.join(f'{os.path.getsize(p) / 1e9:.2f}' for p in files)} GB), "
          f"built in {built:.1f} s with {build_peak:.0f} MB peak RSS")
    print("  linear weights of layer n: dense (n % 3 == 0), 50% magnitude-pruned (n % 3 == 1), 2:4 (n % 3 == 2);"
          " embeddings, lm_head and norms dense")
    print(f"prunescope measured: {os.path.dirname(importlib.util.find_spec('prunescope').origin)}")
    print(f"{os.cpu_count()} cores; {args.repeat} timed runs (3 at most for scan-1, numpy, wanda, cli, ray), median kept, "
          f"best shown too; files in the page cache")
    print()

    scripts = os.path.join(root, "scripts")
    os.makedirs(scripts)
    common.write_runner(root)
    for name, text in [("scan.py", SCAN_SCRIPT),
                       ("wanda.py", WANDA_SCRIPT),
                       ("ray_scan.py", RAY_SCRIPT),
                       ("kernel.py", KERNEL_SCRIPT)]:
        with open(os.path.join(scripts, name), "w") as f:
            f.write(text)
    py = sys.executable
    # The children get a .pyc cache of their own (as an installed tool has; PYTHONDONTWRITEBYTECODE, set
    # in some sandboxes, would recompile prunescope on every CLI run) and nothing is written into src/.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(root, "pycache"),
               NUMBA_CACHE_DIR=os.path.join(root, "numba-cache"))  # numba's cache starts empty, outside src/
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    # Flush the freshly written 2.2 GB to disk first: otherwise the kernel writes it back during the first
    # measurements, on the same cores, and they come out slower (seen: the scan at half its speed).
    os.sync()
    read_all(files)  # warm the page cache: every measurement reads from memory, not from the disk
    idle = idle_cores()
    if idle is not None:
        print(f"idle cores before measuring: {idle:.2f} of {os.cpu_count()} (other work on the machine skews the numbers)")
    repeat, slow_repeat = args.repeat, min(args.repeat, 3)
    m = {}

    # The compiled kernel's one-time cost: first with empty caches (numba's .pyc and kernel compiled), then
    # as every later process pays it. Measured first, so that the timed children all load it from cache.
    kernel_cost = []
    if importlib.util.find_spec("numba") is not None:
        for _ in range(2):
            kernel_cost.append(common.last_json_line(
                common.measure(root, [py, os.path.join(scripts, "kernel.py")], env=env)[1])["seconds"])

    def child(script, argv):
        # one child process times its own runs (imports excluded); runner.py gives its peak RSS
        runs, out = common.measure(root, [py, os.path.join(scripts, script)] + argv, env=env)
        return runs[0][2], common.last_json_line(out)

    def record(key, peak, result, part):
        m[key] = {"times": result[part]["times"], "cpu": result[part]["cpu"], "peak": peak,
                  "delta": None if peak is None or result["rss_mb"] is None else peak - result["rss_mb"],
                  "out": result}
        print(f"  {key:<8} runs: {', '.join(f'{t:.3f}' for t in m[key]['times'])} s")

    # a. and b.: the plain read and the scan on all cores (workers=None), alternating in one process; the
    # scan with the compiled kernel (numpy where numba is missing), and, for scale, on 1 worker and with numpy
    peak, result = child("scan.py", [str(repeat), "0", "1", "numba", index] + files)
    record("plain", None, result, "plain")  # its RSS is the scan's process's: not shown
    record("scan", peak, result, "scan")
    record("scan-1", *child("scan.py", [str(slow_repeat), "1", "0", "numba", index] + files), "scan")
    record("numpy", *child("scan.py", [str(slow_repeat), "0", "0", "numpy", index] + files), "scan")
    # c. wanda
    peak, result = child("wanda.py", [str(slow_repeat)] + files)
    record("wanda", peak, result, "wanda")
    # d. the whole CLI as users run it (console script), imports and header parsing included; the first run
    # fills the .pyc cache and is not counted
    script = os.path.join(os.path.dirname(py), "prunescope")
    entry = [py, script] if os.path.isfile(script) else [py, "-m", "prunescope"]
    runs, cli_out = common.measure(root, entry + ["inspect", model, "--sparsity", "--device", "cpu"], warmup=1,
                            repeat=slow_repeat, env=env)
    m["cli"] = {"times": [r[0] for r in runs], "cpu": [r[1] for r in runs], "peak": max(r[2] for r in runs),
                "delta": None}
    print(f"  {'cli':<8} runs: {', '.join(f'{r[0]:.3f}' for r in runs)} s")
    # e. the Ray executor on a local cluster (its workers' memory is not the driver's: no RSS shown)
    if importlib.util.find_spec("ray") is not None:
        _, result = child("ray_scan.py", [str(slow_repeat), index])
        record("ray", None, result, "ray")
    else:
        print("  (ray is not installed: no Ray row; pip install 'prunescope[ray]')")

    # correctness in passing: the scan's counts against torch's
    print()
    scan, wanda = m["scan"]["out"], m["wanda"]["out"]
    mismatched = [name for name in wanda["nonzero"] if scan["nonzero"].get(name) != wanda["nonzero"][name]]
    scan_total, torch_total = sum(scan["nonzero"].values()), sum(wanda["nonzero"].values())
    nm_tensors = [name for name in wanda["nonzero"] if pruning_of(name) == "2:4"]
    checks = [
        (f"scan total nonzero {scan_total:,} == torch (W != 0).sum() total {torch_total:,}",
         scan_total == torch_total),
        (f"per tensor too: {len(wanda['nonzero']) - len(mismatched)}/{len(wanda['nonzero'])} tensors equal",
         not mismatched and set(scan["nonzero"]) == set(wanda["nonzero"])),
    ]
    if nm_tensors:  # 3 layers at least
        checks.append((f"scan finds every group of 4 compliant in the {len(nm_tensors)} 2:4 weights",
                       all(scan["nm24"][name][0] == scan["nm24"][name][1] for name in nm_tensors)))
    checks += [
        (f"the checkpoint holds -0.0 values ({wanda['negative_zeros']:,}), which count as zeros",
         wanda["negative_zeros"] > 0),
        (f"`prunescope inspect --sparsity` printed the same nonzero count ({torch_total:,})",
         f"{torch_total:,}" in cli_out or str(torch_total) in cli_out),
    ]
    if "ray" in m:
        checks.append(("the Ray executor's per-tensor counts equal torch's too",
                       m["ray"]["out"]["nonzero"] == wanda["nonzero"]))
    for what, ok in checks:
        print(f"  {'ok ' if ok else 'BAD'}  {what}")
    print(f"  (Wanda's check_sparsity over the linear weights: {wanda['linear_sparsity']:.4f})")

    # table: throughput = bytes of tensor data / seconds, for every row
    print()
    names = {"plain": "a. plain read, 1 thread (floor)", "scan": f"b. prunescope scan, {os.cpu_count()} workers",
             "scan-1": "   prunescope scan, 1 worker", "numpy": f"   numpy's passes, {os.cpu_count()} workers",
             "wanda": "c. wanda: load_file + (W==0).sum()",
             "cli": "d. prunescope inspect --sparsity (CLI)",
             "ray": f"e. --executor ray, local cluster, {os.cpu_count()} CPUs"}
    rows = [("measurement", "median s", "GB/s", "best GB/s", "CPU/wall", "peak RSS MB", "RSS delta MB")]
    for key, r in m.items():
        med, best = statistics.median(r["times"]), min(r["times"])
        r["gbps"] = data_bytes / med / 1e9
        # CPU/wall: the cores a run really kept busy (2 workers that show ~1.0 here did not get 2 cores)
        busy = "-" if r["cpu"] is None else f"{statistics.median(c / t for c, t in zip(r['cpu'], r['times'])):.2f}"
        rows.append((names[key], f"{med:.3f}", f"{r['gbps']:.2f}", f"{data_bytes / best / 1e9:.2f}", busy,
                     "-" if r["peak"] is None else f"{r['peak']:.0f}", "-" if r["delta"] is None else f"{r['delta']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + f"{row[0]:<{widths[0]}}" + "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:])))
        if n == 0:
            print("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    print("  (RSS delta: the peak over the child's RSS after its imports, i.e. what the measured work added)")
    print()
    ratio = m["scan"]["gbps"] / m["plain"]["gbps"]
    rounds = [p / s for p, s in zip(m["plain"]["times"], m["scan"]["times"])]  # the two alternate: paired
    print(f"  scan / plain read          {ratio:6.2f}x throughput "
          f"(round by round: {', '.join(f'{x:.2f}' for x in rounds)})")
    print(f"  scan {os.cpu_count()} workers / 1 worker  {m['scan']['gbps'] / m['scan-1']['gbps']:6.2f}x")
    print(f"  compiled kernel / numpy    {m['scan']['gbps'] / m['numpy']['gbps']:6.2f}x")
    print(f"  scan / wanda               {m['scan']['gbps'] / m['wanda']['gbps']:6.2f}x")
    if kernel_cost:
        print(f"  compiled kernel's one-time cost per process: {kernel_cost[1]:.2f} s (import numba, load the kernel "
              f"from numba's cache); the first time on a machine {kernel_cost[0]:.2f} s (compiling it, and numba's .pyc)")
    if "ray" in m:
        out = m["ray"]["out"]
        print(f"  ray / local scan           {m['ray']['gbps'] / m['scan']['gbps']:6.2f}x  ({out['units']} units; "
              f"one unit's overhead {out['unit_overhead_s'] * 1000:.0f} ms: plan, probe task, unit task, merge)")
        print(f"  ray's one-time costs: {out['start_s']:.1f} s to start the local instance, then {out['first_scan_s']:.1f} s "
              f"for the first scan (workers started, numba loaded), not in the timed runs")

    print()
    ok = ratio >= TARGET
    print(f"  {'PASS' if ok else 'FAIL'}  scan throughput >= {TARGET:.0%} of the plain read's on CPU, page cache, "
          f"all cores ({m['scan']['gbps']:.2f} vs {m['plain']['gbps']:.2f} GB/s: {ratio:.0%})")
    return not ok or not all(ok for _, ok in checks)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_build":
        # the child that builds the checkpoint (see run): prints the shard paths and tensor bytes
        print(json.dumps(build_checkpoint(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        main()
