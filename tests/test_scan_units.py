"""The content scan cut into units (scan_units: what --executor ray runs), counted here on threads:
merged in any completion order, the numbers are the local scan's, bit for bit, and torch's."""

import importlib.util
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import pytest

import builders
from oracle import zero_layer_
from prunescope.measure import scan
from prunescope.readers import read_tensor_index
from prunescope.measure.scan_units import count_unit, merge_units, plan_units
from test_sparsity import magnitude_prune_, wanda_nm_

SMALL_CHUNK = 2048  # bytes: the tiny model's matrices become several chunks, and span several units
SMALL_UNIT = 8192


def pruned_checkpoint(folder):
    """A tiny fp32 Llama in several shards: 2:4 layers, a 50% layer, a zeroed one with -0.0."""
    model = builders.llama()
    wanda_nm_(model, 2, 4)
    magnitude_prune_(model.model.layers[1])
    zero_layer_(model.model.layers[3], negative=True)
    model.save_pretrained(folder, max_shard_size="100KB")
    return model, list(read_tensor_index([str(folder / "model.safetensors.index.json")]).tensors)


def fused_names(tensors):
    """Tensors to count per row, as Phi-3's fused projections are (here: the query projections)."""
    return frozenset(tensor.name for tensor in tensors if tensor.name.endswith("q_proj.weight"))


def assert_same_contents(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for name, contents in expected.items():
        other = got[name]
        assert (other.numel, other.nonzero, other.nm_groups) == (contents.numel, contents.nonzero, contents.nm_groups), name
        for field in ("row_nonzero", "column_nonzero"):
            mine, theirs = getattr(other, field), getattr(contents, field)
            assert (mine is None) == (theirs is None), (name, field)
            if theirs is not None:
                assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), (name, field)
        assert other.row_compliant.keys() == contents.row_compliant.keys(), name
        for pattern, per_row in contents.row_compliant.items():
            assert np.array_equal(other.row_compliant[pattern], per_row), (name, pattern)


def test_units_are_contiguous_ranges_of_one_file_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_BYTES", SMALL_CHUNK)
    _, tensors = pruned_checkpoint(tmp_path / "model")
    files = sorted({tensor.file for tensor in tensors})
    assert len(files) >= 2, "the test wants several shards"
    # Files of up to 2 GiB are one unit each.
    whole = plan_units(tensors, model="m")
    assert [unit.file for unit in whole] == files
    units = plan_units(tensors, model="m", unit_bytes=SMALL_UNIT, whole_file_bytes=0)
    assert [unit.number for unit in units] == list(range(len(units)))
    assert [(unit.file, unit.start) for unit in units] == sorted((unit.file, unit.start) for unit in units)
    for unit, following in zip(units, units[1:]):
        assert unit.start < unit.end
        if following.file == unit.file:
            assert unit.end <= following.start  # contiguous tensors: ranges do not overlap
            # about unit_bytes each (the last of a file less): cut at the first chunk that reaches it
            assert SMALL_UNIT <= unit.end - unit.start < SMALL_UNIT + SMALL_CHUNK
    for unit in units:
        for tensor, start_row, rows, _ in unit.chunks:
            first, span, _ = scan.chunk_layout(tensor, start_row, rows)
            assert tensor.file == unit.file and unit.start <= first and first + span <= unit.end
    planned = [chunk[:3] for chunk in scan.plan_chunks(tensors)]
    in_units = [chunk[:3] for unit in units for chunk in unit.chunks]
    assert sorted(in_units, key=lambda c: (c[0].name, c[1])) == sorted(planned, key=lambda c: (c[0].name, c[1]))
    assert sum(unit.tensor_bytes for unit in units) == sum(t.numel * t.itemsize for t in tensors)
    split = {tensor.name for unit in units for tensor, *_ in unit.chunks}
    assert any(sum(1 for unit in units if name in {t.name for t, *_ in unit.chunks}) > 1 for name in split), \
        "some tensor should span several units"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_shuffled_completion_merges_to_the_local_scan(tmp_path, monkeypatch, seed, engine):
    if engine == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(scan, "CHUNK_BYTES", SMALL_CHUNK)
    model, tensors = pruned_checkpoint(tmp_path / "model")
    fused = fused_names(tensors)
    local = scan.scan_tensors(tensors, engine=engine, per_row_groups=fused)
    units = plan_units(tensors, fused, "m", unit_bytes=SMALL_UNIT, whole_file_bytes=0)
    assert len(units) > 4
    order = random.Random(seed)
    delays = {unit.number: order.random() / 200 for unit in units}

    def count(unit):
        time.sleep(delays[unit.number])  # completion order differs from the plan's
        return unit.number, count_unit(unit, scan.compiled_kernel() if engine == "numba" else None)

    submitted = order.sample(units, len(units))
    with ThreadPoolExecutor(max_workers=3) as pool:
        finished = [future.result() for future in as_completed([pool.submit(count, unit) for unit in submitted])]
    completed = [number for number, _ in finished]
    assert completed != sorted(completed)  # out of plan order
    merged = merge_units(tensors, units, dict(finished))
    assert_same_contents(merged, local)
    for name, parameter in model.named_parameters():
        assert merged[name].nonzero == int((parameter != 0).sum()), name


def test_missing_ray_is_one_line_naming_the_install(monkeypatch):
    from prunescope.pipeline import scan_options
    from prunescope.tensors import CheckpointError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    with pytest.raises(CheckpointError) as raised:
        scan_options("cpu", "ray")
    assert raised.value.line() == "--executor ray: Ray is not installed (pip install 'prunescope[ray]')"


def test_an_address_nothing_listens_on_is_one_line_within_seconds():
    import socket

    from prunescope.measure.scan_ray import check_reachable
    from prunescope.tensors import CheckpointError

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.perf_counter()
        with pytest.raises(CheckpointError) as raised:
            check_reachable(address)
        assert raised.value.line().startswith(f"--address {address}: cannot reach the Ray cluster: ")
        assert time.perf_counter() - started < 6
    with socket.socket() as server:  # one that listens passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")


def test_local_scan_imports_neither_ray_nor_numba_for_small_models(tmp_path):
    model = builders.llama()
    model.save_pretrained(tmp_path / "model")
    code = ("import sys; from prunescope.cli import main; status = main(['inspect', sys.argv[1], '--sparsity', "
            "'--device', 'cpu']); print('imported:', sorted(m for m in ('ray', 'numba', 'torch') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "imported: []"
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in run.stdout or str(total) in run.stdout


def test_numba_loads_for_big_scans_then_counts_everything(monkeypatch):
    scan.compiled_kernel.cache_clear()
    try:
        assert scan.choose_engine("cpu", scan.KERNEL_MIN_BYTES - 1) == "numpy"
        assert scan.compiled_kernel.cache_info().currsize == 0  # numba not even imported for it
        expected = "numba" if importlib.util.find_spec("numba") else "numpy"
        assert scan.choose_engine("cpu", scan.KERNEL_MIN_BYTES) == expected
        assert scan.choose_engine("cpu", 1) == expected  # loaded: no cost left to repay
        assert scan.choose_engine("cuda", 1) == "torch"
        # A Python without numba (no wheels yet) counts big scans with numpy.
        monkeypatch.setitem(sys.modules, "numba", None)
        monkeypatch.delitem(sys.modules, "prunescope.measure.scan_kernel", raising=False)
        scan.compiled_kernel.cache_clear()
        assert scan.choose_engine("cpu", scan.KERNEL_MIN_BYTES) == "numpy"
    finally:
        scan.compiled_kernel.cache_clear()
