"""`prunescope demo`: copy the bundled miniature pruning study to a folder and analyse it."""

from __future__ import annotations

import os
import shutil

DEMO_DATA = os.path.join(os.path.dirname(__file__), "demo_data")


def write_demo(directory: str) -> tuple[str, str]:
    """Copy the demo models into `directory`; returns (models folder, base model folder)."""
    for part in ("models", "base", "moe"):
        shutil.copytree(os.path.join(DEMO_DATA, part), os.path.join(directory, part), dirs_exist_ok=True)
    return os.path.join(directory, "models"), os.path.join(directory, "base", "Llama-demo")


def run_demo(directory: str) -> int:
    from .batch import run_batch

    from .report.command import run_report

    try:
        models_dir, base_model = write_demo(directory)
    except OSError as error:
        print(f"✗ error: {directory}: cannot write the demo there: {error.strerror or error} (choose another folder)")
        return 1
    output_dir = os.path.join(directory, "baselines_analysis")
    print(f"Demo models written to {directory}/: a base Llama in base/, pruned variants in models/\n")
    status = run_batch(models_dir, base_model=base_model, output_dir=output_dir, merge=True, sparsity=True,
                       device="cpu")
    print()
    status = max(status, run_report(output_dir, models_dir=models_dir))
    print("\nA Mixture-of-Experts study: a base Mixtral in moe/base/, experts pruned per layer in moe/models/\n")
    moe = os.path.join(directory, "moe")
    return max(status, run_batch(os.path.join(moe, "models"), base_model=os.path.join(moe, "base", "Mixtral-demo"),
                                 output_dir=os.path.join(moe, "baselines_analysis"), sparsity=True, device="cpu"))
