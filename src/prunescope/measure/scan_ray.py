"""--executor ray: the content scan's units (scan_units) run as tasks on a Ray cluster.

The driver (the `prunescope` process) keeps everything else: discovery, headers, structure,
fingerprints, comparisons and reports. It joins the cluster given by --address, else RAY_ADDRESS,
else starts a local instance; prunescope ships itself to the workers (runtime_env py_modules), so they
need Ray and numpy (numba to count fast) but no prunescope install. The workers must see the
checkpoints at the same paths: a first probe task per model checks that and fails fast.

A worker that dies (a node lost, a SIGBUS from a network mount) or a unit that meets an OSError is
retried, RETRIES times at most; a unit that still fails makes its model an error, and the batch goes on.
Imported only with --executor ray: Ray is an extra (`pip install 'prunescope[ray]'`).
"""

from __future__ import annotations

import functools
import os

from ..records import Record
from .scan_units import UNIT_BYTES, WHOLE_FILE_BYTES, count_unit, merge_units, plan_units
from ..tensors import CheckpointError, TensorInfo

RETRIES = 3
INSTALL_HINT = "pip install 'prunescope[ray]'"
# For tests: a unit that finds this file missing creates it and kills its own worker (os._exit), once
# (a file in a folder that does not exist cannot be created: every try of every unit meets an OSError).
CRASH_ONCE_ENV = "PRUNESCOPE_RAY_TEST_CRASH_ONCE"


class UnitError(Record):
    """A unit that failed for a reason retrying cannot fix (a truncated file): its model's error."""

    path: str
    problem: str
    hint: str


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` ("auto", "HOST:6379", "ray://HOST:10001"), else RAY_ADDRESS, else
    a new local instance; once per process (an already connected driver is left as it is)."""
    try:
        import ray
    except ImportError:
        raise CheckpointError("--executor ray", "Ray is not installed", INSTALL_HINT) from None
    if ray.is_initialized():
        return  # joined by whoever runs us (an application, a test): its runtime_env ships the code
    import logging

    given = address or os.environ.get("RAY_ADDRESS")
    check_reachable(given)
    try:
        ray.init(address=address, runtime_env=job_runtime_env(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"--address {given or 'a local instance'}", f"cannot join the Ray cluster: {error}",
                              "check the address (ray status on the head node), or leave it out for a "
                              "local instance") from None


def check_reachable(address: str | None) -> None:
    """A HOST:PORT nothing listens on would keep ray.init retrying for minutes: a plain connection
    first, for one line within seconds. ("auto" and no address are Ray's to resolve: they fail fast.)"""
    if not address or address == "auto":
        return
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        raise CheckpointError(f"--address {address}", f"cannot reach the Ray cluster: {error}",
                              "check the address: `ray status` on the head node prints it") from None


def describe_cluster() -> str:
    """e.g. "a Ray cluster of 2 nodes, 64 CPUs"."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return f"a Ray cluster of {nodes} node{'s' if nodes != 1 else ''}, {cpus} CPUs"


def scan_tensors_ray(tensors: list[TensorInfo], per_row_groups=frozenset(), progress=None, model: str = "",
                     address: str | None = None, unit_bytes: int | None = None) -> dict:
    """scan.scan_tensors' answer, counted by Ray tasks; `progress(bytes)` as each unit completes.
    Units are scan_units' (about 1 GiB, a file up to 2 GiB whole) unless `unit_bytes` cuts every file.
    Raises CheckpointError (this model's error) when workers cannot read the files or a unit fails."""
    import ray

    connect(address)
    sizes = (UNIT_BYTES, WHOLE_FILE_BYTES) if unit_bytes is None else (unit_bytes, 0)
    units = plan_units(tensors, per_row_groups, model, *sizes)
    if not units:
        return merge_units(tensors, units, {})
    options = {"scheduling_strategy": "SPREAD", **_task_runtime_env()}
    _probe(sorted({unit.file for unit in units}), options)
    count = _remote(_count_unit).options(max_retries=RETRIES, retry_exceptions=[OSError], **options)
    pending = {count.remote(unit): unit for unit in units}
    results = {}
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(done)
            outcome = _outcome(done, unit)
            if isinstance(outcome, UnitError):
                raise CheckpointError(outcome.path, outcome.problem, outcome.hint)
            results[unit.number] = outcome
            if progress:
                progress(unit.tensor_bytes)
    finally:
        for ref in pending:  # this model failed: its other units are not needed
            # force: their workers are ended, not interrupted (an interrupted import would stay broken)
            ray.cancel(ref, force=True)
    return merge_units(tensors, units, results)


def _outcome(ref, unit):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:  # retries spent: a worker kept dying, or kept failing to read
        return UnitError(unit.file, f"bytes {unit.start}-{unit.end} could not be scanned in {RETRIES + 1} "
                                    f"tries: {_reason(error)}", "see the workers' logs (ray logs)")


def _reason(error: Exception) -> str:
    """The last line of what a task raised (Ray's errors carry the worker's whole traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return lines[-1] if lines else type(cause).__name__


def _probe(paths: list[str], options: dict) -> None:
    """One task reads a byte of every file of the model where the units will run."""
    import ray

    try:
        node, unreadable, why = ray.get(_remote(unreadable_path).options(**options).remote(paths))
    except ray.exceptions.RayError as error:
        raise CheckpointError(paths[0], f"the task checking that workers can read the files failed: "
                                        f"{_reason(error)}", "see the workers' logs (ray logs)") from None
    if unreadable is not None:
        raise CheckpointError(unreadable, f"worker on {node} cannot read {unreadable} ({why})",
                              "the workers must see the checkpoints at the same paths: mount the same "
                              "storage on every Ray node")


def unreadable_path(paths: list[str]) -> tuple[str, str | None, str]:
    """(this node's name, the first of `paths` it cannot read or None, why)."""
    import socket

    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            return socket.gethostname(), path, error.strerror or str(error)
    return socket.gethostname(), None, ""


def _count_unit(unit):
    """The task: a unit's parts, or a UnitError. An OSError is raised, for Ray to retry it."""
    from .scan import compiled_kernel

    with open(unit.file, "rb"):
        pass  # a mount that is not there (yet): OSError, retried
    _crash_once_for_tests()
    try:
        return count_unit(unit, compiled_kernel())
    except CheckpointError as error:
        return UnitError(error.path, error.problem, error.hint)


def _crash_once_for_tests() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def job_runtime_env() -> dict:
    """prunescope itself, shipped to the workers (Ray takes local folders at the job level only)."""
    # the prunescope package (this module sits in its measure/ folder)
    return {"py_modules": [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]}


def _task_runtime_env() -> dict:
    """The test switch above, passed on to the workers when it is set (Ray merges it with the job's
    runtime_env: the shipped code stays)."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    return {"runtime_env": {"env_vars": {CRASH_ONCE_ENV: marker}}} if marker else {}


@functools.lru_cache(maxsize=None)
def _remote(function):
    """The Ray task for `function`, made once per process (each ray.remote exports the function again)."""
    import ray

    return ray.remote(function)
