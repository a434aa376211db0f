"""--executor ray on a real local Ray cluster (2 CPUs): the same counts as the local scan, a worker
killed mid-run is retried, progress arrives per unit, unreadable files fail fast with one line."""

import json
import os

import pytest

ray = pytest.importorskip("ray")

from prunescope.measure import scan  # noqa: E402
from prunescope.batch import run_batch  # noqa: E402
from prunescope.measure.scan_ray import CRASH_ONCE_ENV, RETRIES, job_runtime_env, scan_tensors_ray  # noqa: E402
from prunescope.tensors import CheckpointError  # noqa: E402
from test_scan_units import SMALL_CHUNK, SMALL_UNIT, assert_same_contents, fused_names, pruned_checkpoint  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def cluster():
    # prunescope's own runtime_env (what `connect` passes): the workers import the copy it ships
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=job_runtime_env())
    yield
    ray.shutdown()


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_BYTES", SMALL_CHUNK)  # planned on the driver: the units carry it
    model, tensors = pruned_checkpoint(tmp_path / "model")
    return model, tensors, scan.scan_tensors(tensors, engine="numpy", per_row_groups=fused_names(tensors))


def test_same_counts_as_the_local_scan_and_progress_per_unit(cluster, checkpoint):
    model, tensors, local = checkpoint
    progress = []
    contents = scan_tensors_ray(tensors, fused_names(tensors), progress.append, "m", unit_bytes=SMALL_UNIT)
    assert_same_contents(contents, local)
    for name, parameter in model.named_parameters():
        assert contents[name].nonzero == int((parameter != 0).sum()), name
    assert len(progress) > 4  # one event per unit, as each completes
    assert sum(progress) == sum(tensor.numel * tensor.itemsize for tensor in tensors)


def test_workers_run_the_copy_of_prunescope_shipped_to_them(cluster):
    @ray.remote
    def where():
        import prunescope

        return prunescope.__file__

    ours = os.path.dirname(os.path.dirname(os.path.dirname(scan.__file__)))  # src/, above prunescope/measure/
    # with a task's own env_vars too (as the crash switch below sets them): Ray merges, the code stays
    for task in (where, where.options(runtime_env={"env_vars": {"SOME": "thing"}})):
        shipped = ray.get(task.remote())
        assert "runtime_resources" in shipped and not shipped.startswith(ours)


def test_a_worker_killed_mid_run_is_retried(cluster, checkpoint, tmp_path, monkeypatch):
    _, tensors, local = checkpoint
    marker = tmp_path / "a worker died here"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    contents = scan_tensors_ray(tensors, fused_names(tensors), None, "m", unit_bytes=SMALL_UNIT)
    assert marker.exists()  # a unit's worker really exited (os._exit) before the retry
    assert_same_contents(contents, local)


def test_a_unit_that_fails_every_try_makes_its_model_an_error(cluster, checkpoint, tmp_path, monkeypatch):
    _, tensors, _ = checkpoint
    # the test switch's marker in a folder that does not exist: every try of every unit meets an OSError
    monkeypatch.setenv(CRASH_ONCE_ENV, str(tmp_path / "missing" / "marker"))
    with pytest.raises(CheckpointError) as raised:
        scan_tensors_ray(tensors)
    assert raised.value.path in {tensor.file for tensor in tensors}
    assert f"could not be scanned in {RETRIES + 1} tries" in raised.value.line()
    assert "No such file or directory" in raised.value.line()


def test_files_the_workers_cannot_read_fail_fast(cluster, checkpoint):
    _, tensors, _ = checkpoint
    gone = tensors[-1].file
    os.rename(gone, gone + ".moved")  # the driver read its header; the workers will not find it
    with pytest.raises(CheckpointError) as raised:
        scan_tensors_ray(tensors, unit_bytes=SMALL_UNIT)
    assert f"cannot read {gone} (No such file or directory)" in raised.value.line()
    assert raised.value.line().startswith(f"{gone}: worker on ")


def test_a_truncated_file_makes_its_model_an_error(cluster, checkpoint):
    _, tensors, _ = checkpoint
    shard = tensors[-1].file
    os.truncate(shard, os.path.getsize(shard) - 1024)  # after its header was read: only the units see it
    with pytest.raises(CheckpointError) as raised:
        scan_tensors_ray(tensors, unit_bytes=SMALL_UNIT)
    assert raised.value.path == shard and "truncated" in raised.value.line()


def test_batch_with_executor_ray_writes_the_local_numbers(cluster, tmp_path):
    _, _ = pruned_checkpoint(tmp_path / "models" / "pruned")
    pruned_checkpoint(tmp_path / "models" / "other")
    outputs = {}
    for executor in ("local", "ray"):
        assert run_batch(str(tmp_path / "models"), output_dir=str(tmp_path / executor), sparsity=True,
                         device="cpu", executor=executor, force=True) == 0
        for name in ("pruned", "other"):
            data = json.loads((tmp_path / "models" / name / "analysis" / "model_structure.json").read_text())
            outputs[executor, name] = (data["nonzero_params"], data["tensors"], [layer["attention"] for layer in data["layers"]])
    assert outputs["ray", "pruned"] == outputs["local", "pruned"]
    assert outputs["ray", "other"] == outputs["local", "other"]
