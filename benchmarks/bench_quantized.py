"""
Quantized checkpoints: does the header analysis stay near the floor, and is the stored-nonzero scan of
packed int4 weights at least as fast per logical parameter as the bf16 scan?

  A. header  - a Llama-3-8B-shaped compressed-tensors W4A16 checkpoint (pack-quantized, symmetric,
               group 128: `weight_packed` I32, `weight_scale` BF16, `weight_shape` I64 with its real
               values; lm_head and embeddings BF16; 2 shards + index; the data is a sparse hole except
               each tensor's first bytes). Each in its own subprocess, median CPU (user+sys):
                 bare - the minimal header-parsing script of bench_analyze.py (the floor)
                 one  - `prunescope analyze --force` on it
               Target: one <= 2x bare. Checked in passing: total_params is the dense model's 8,030,261,248.
  B. scan    - `--layers` decoder layers of Llama-3-8B's linear weights, 2:4-pruned random values,
               written twice: bf16 (dense) and pack-quantized int4 (codes, zero = 8). With the files in
               the page cache, in one process, alternating: the dense scan (`scan_tensors`) of the bf16
               file and the code scan (`scan_encoded`) of the int4 file, same workers. Reports bytes read
               and seconds per logical parameter. Targets: int4 reads <= 30% of the bf16 bytes (a
               quarter, plus scales), and its time per logical parameter <= the bf16 scan's.
               Checked in passing: both scans find the same nonzero count and 2:4 everywhere.

Usage:
    python benchmarks/bench_quantized.py [--repeat 5] [--layers 2] [--workers N] [--keep] [--strict]
"""

import argparse
import json
import os
import statistics
import struct
import sys
import time

import common  # benchmarks/common.py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_analyze import BARE_SCRIPT, CONFIG, MAX_SHARD_BYTES  # noqa: E402 - the same checkpoint shape and floor

GROUP = 128
SIZES = {"BF16": 2, "I32": 4, "I64": 8}
QUANTIZATION_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
    "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": GROUP}}},
    "ignore": ["lm_head"], "sparsity_config": {}, "version": "0.20.1"}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantized_tensors(dense):
    """(name, dtype, shape, data or None) of the W4A16 checkpoint of a dense (name, shape) list."""
    tensors = []
    for name, shape in dense:
        module = name.rsplit(".", 1)[0]
        if ".layers." in name and module.rsplit(".", 1)[-1] in LINEAR:
            out_features, in_features = shape
            tensors += [(f"{module}.weight_packed", "I32", (out_features, in_features // 8), None),
                        (f"{module}.weight_scale", "BF16", (out_features, in_features // GROUP), None),
                        (f"{module}.weight_shape", "I64", (2,), struct.pack("<2q", *shape))]
        else:
            tensors.append((name, "BF16", shape, None))
    return tensors


# How safetensors (0.8.0, safetensors.torch.save of one tensor per dtype) orders a file's data: larger
# elements first, these dtypes in this order; names sort within a dtype. So a compressed-tensors file
# holds its I64 weight_shape tensors side by side at the start of its data, its I32 codes next.
LIBRARY_ORDER = ("I64", "F64", "F32", "I32", "BF16", "F16", "I16", "F8_E4M3", "I8", "U8", "BOOL")


def write_file(path, tensors, fill=None):
    """A safetensors file; data given per tensor, else `fill(name, dtype, shape)` bytes, else a hole
    with a few nonzero bytes first (real weights are nonzero)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    # The data in the order the safetensors library writes it: by dtype (LIBRARY_ORDER), then by name.
    for name, dtype, shape, _ in sorted(tensors, key=lambda tensor: (LIBRARY_ORDER.index(tensor[1]), tensor[0])):
        nbytes = common.numel(shape) * SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    data = {name: value for name, _, _, value in tensors}
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            handle.seek(start + entry["data_offsets"][0])
            value = data[name] if data[name] is not None else \
                fill(name, entry["dtype"], entry["shape"]) if fill else b"\x3f" * min(64, entry["data_offsets"][1] - entry["data_offsets"][0])
            handle.write(value)
        handle.truncate(start + offset)


def build_header_model(folder):
    os.makedirs(folder)
    tensors = quantized_tensors(common.llama_tensors(CONFIG))
    shards, current, size = [], [], 0
    for tensor in tensors:
        nbytes = common.numel(tensor[2]) * SIZES[tensor[1]]
        if current and size + nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += nbytes
    shards.append(current)
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_file(os.path.join(folder, name), shard)
        weight_map.update((tensor[0], name) for tensor in shard)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}, handle)
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({**CONFIG, "quantization_config": QUANTIZATION_CONFIG}, handle)


def header_part(args, root):
    model = os.path.join(root, "one", "llama-3-8b-w4a16")
    build_header_model(model)
    common.write_runner(root)
    with open(os.path.join(root, "bare.py"), "w") as handle:
        handle.write(BARE_SCRIPT)
    py = sys.executable
    script = os.path.join(os.path.dirname(py), "prunescope")
    entry = [py, script] if os.path.isfile(script) else [py, "-m", "prunescope"]
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(root, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    results = {}
    for label, cmd in (("bare", [py, os.path.join(root, "bare.py"), model]),
                       ("one", entry + ["analyze", "--force", "--models_dir", os.path.dirname(model),
                                        "--output_dir", os.path.join(root, "out")])):
        runs, _ = common.measure(root, cmd, warmup=1, repeat=args.repeat, env=env)
        results[label] = statistics.median(run[1] for run in runs)
        print(f"  {label:<5} cpu {results[label]:.3f} s   (runs: {', '.join(f'{run[1]:.3f}' for run in runs)})")
    with open(os.path.join(model, "analysis", "model_structure.json")) as handle:
        structure = json.load(handle)
    expected = sum(common.numel(shape) for _, shape in common.llama_tensors(CONFIG))
    ok_count = structure["total_params"] == expected and structure["quantization"]["format"] == "pack-quantized"
    print(f"  {'ok ' if ok_count else 'BAD'}  total_params == {expected:,} (the dense model's); "
          f"{structure['quantization']['bits_per_param']:.2f} bits per parameter stored")
    ratio = results["one"] / results["bare"]
    passed = ratio <= 2
    print(f"  {'PASS' if passed else 'FAIL'}  header analysis of the W4A16 8B: {ratio:.2f}x the bare script (target <= 2x)")
    return passed and ok_count


def scan_part(args, root):
    import numpy as np

    from prunescope.measure.scan import scan_tensors
    from prunescope.measure.scan_quantized import scan_encoded
    from prunescope.quantized import decode_quantization
    from prunescope.readers import read_tensor_index

    rng = np.random.default_rng(0)
    shapes = [(name, shape) for name, shape in common.llama_tensors(CONFIG)
              if ".layers." in name and len(shape) == 2 and int(name.split(".")[2]) < args.layers]

    def two_four(rows, columns):
        keep = np.zeros((rows, columns // 4, 4), dtype=bool)
        first = rng.integers(0, 4, size=(rows, columns // 4))
        second = (first + rng.integers(1, 4, size=first.shape)) % 4
        np.put_along_axis(keep, first[..., None], True, axis=2)
        np.put_along_axis(keep, second[..., None], True, axis=2)
        return keep.reshape(rows, columns)

    dense_dir, packed_dir = os.path.join(root, "bf16"), os.path.join(root, "int4")
    os.makedirs(dense_dir)
    os.makedirs(packed_dir)
    dense, packed = [], []
    for name, (rows, columns) in shapes:
        keep = two_four(rows, columns)
        values = rng.integers(1, 1 << 15, size=(rows, columns), dtype=np.uint16)
        dense.append((name, "BF16", (rows, columns), np.where(keep, values, 0).astype("<u2").tobytes()))
        codes = np.where(keep, rng.integers(0, 15, size=(rows, columns), dtype=np.uint8), 8).astype(np.uint8)
        codes = np.where(keep & (codes == 8), 9, codes).astype(np.uint8)  # kept values are nonzero codes
        module = name.rsplit(".", 1)[0]
        packed += [(f"{module}.weight_packed", "I32", (rows, columns // 8),
                    (codes[:, 0::2] | (codes[:, 1::2] << 4)).tobytes()),
                   (f"{module}.weight_scale", "BF16", (rows, columns // GROUP),
                    np.full((rows, columns // GROUP), 0x3C00, dtype="<u2").tobytes()),
                   (f"{module}.weight_shape", "I64", (2,), struct.pack("<2q", rows, columns))]
    write_file(os.path.join(dense_dir, "model.safetensors"), dense)
    write_file(os.path.join(packed_dir, "model.safetensors"), packed)
    del dense, packed
    dense_index = read_tensor_index([os.path.join(dense_dir, "model.safetensors")])
    packed_index = decode_quantization(read_tensor_index([os.path.join(packed_dir, "model.safetensors")]),
                                       {"quantization_config": QUANTIZATION_CONFIG})
    items = list(packed_index.encoded.values())
    logical = sum(tensor.numel for tensor in dense_index.tensors)
    dense_bytes = sum(tensor.numel * tensor.itemsize for tensor in dense_index.tensors)
    packed_bytes = packed_index.quantization.storage_bytes
    for path in (dense_dir, packed_dir):  # into the page cache: both measured warm
        with open(os.path.join(path, "model.safetensors"), "rb") as handle:
            while handle.read(1 << 24):
                pass
    workers = args.workers or os.cpu_count()
    times = {"bf16": [], "int4": []}
    found = {}
    for _ in range(args.repeat):
        start = time.perf_counter()
        found["bf16"] = scan_tensors(list(dense_index.tensors), "cpu", workers)
        times["bf16"].append(time.perf_counter() - start)
        start = time.perf_counter()
        found["int4"] = scan_encoded(items, workers)
        times["int4"].append(time.perf_counter() - start)
    print(f"  {args.layers} layers of Llama-3-8B linears: {logical:,} logical parameters, 2:4; {workers} workers")
    per = {}
    for label, data_bytes in (("bf16", dense_bytes), ("int4", packed_bytes)):
        seconds = statistics.median(times[label])
        per[label] = seconds / logical
        print(f"  {label:<5} reads {data_bytes / 1e6:8.1f} MB   {seconds:.3f} s   {1e9 * per[label]:.3f} ns per logical "
              f"parameter   (runs: {', '.join(f'{t:.3f}' for t in times[label])})")
    nonzero = {label: sum(contents.nonzero for contents in found[label].values()) for label in found}
    two_four_everywhere = all(contents.nm_groups["2:4"][0] == contents.nm_groups["2:4"][1]
                              for label in found for contents in found[label].values())
    ok = nonzero["bf16"] == nonzero["int4"] and two_four_everywhere
    print(f"  {'ok ' if ok else 'BAD'}  both scans: {nonzero['bf16']:,} vs {nonzero['int4']:,} nonzero, 2:4 everywhere: "
          f"{two_four_everywhere}")
    share = packed_bytes / dense_bytes
    targets = [(f"int4 reads {share * 100:.1f}% of the bf16 bytes (target <= 30%)", share <= 0.30),
               (f"int4 time per logical parameter {per['int4'] / per['bf16']:.2f}x the bf16 scan's (target <= 1x)",
                per["int4"] <= per["bf16"])]
    for what, passed in targets:
        print(f"  {'PASS' if passed else 'FAIL'}  {what}")
    return ok and all(passed for _, passed in targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers in the scan benchmark (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="scan workers (default: all cores)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--strict", action="store_true", help="exit nonzero if a target is missed")
    args = parser.parse_args()
    common.run_in_data_dir("bench-quantized-", run, args)


def run(args, root):
    print("A. header analysis of a quantized 8B checkpoint")
    header_ok = header_part(args, root)
    print("\nB. stored-nonzero scan: packed int4 against bf16")
    scan_ok = scan_part(args, root)
    return not (header_ok and scan_ok)


if __name__ == "__main__":
    main()
