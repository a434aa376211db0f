"""Safety on one corpus: prunescope vs picklescan vs fickling vs torch.load(weights_only=True).

Builds the corpus of tests/hostile_corpus.py (malicious samples from fickling's injection API,
picklescan-style gadgets and hand-written opcode streams; benign real checkpoints), checks that every
payload is live under torch.load(weights_only=False), then asks each tool about every file:
  detected  the tool raised an alarm on (or refused) a malicious file
  named     what it said names the payload's callable (os.system, torch.utils.collect_env.run, ...)
  alarms    benign files it raised an alarm on or refused (false alarms)
  crashes   files where the tool itself failed (an exception that is not its verdict)
  ran       payload sentinels created while the tool read the files
Run: python benchmarks/bench_safety.py  (picklescan and fickling are optional; a missing one is said)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def ask_prunescope(path):
    from prunescope.readers import read_tensor_index
    from prunescope.tensors import CheckpointError

    try:
        index = read_tensor_index([path])
    except CheckpointError as error:
        return True, error.line()  # refused: the line says why, and names what the pickle calls
    text = "\n".join(finding.line() for finding in index.findings)
    return bool(text), text


def ask_picklescan(path):
    from picklescan.scanner import SafetyLevel, scan_file_path

    result = scan_file_path(path)
    if result.scan_err:
        raise RuntimeError("scan error")
    dangerous = [f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous]
    return result.issues_count > 0, " ".join(dangerous)


def ask_fickling(path):
    """As fickling's own CLI scans a file: zip archives member by member, other files as pickles."""
    import zipfile

    import fickling

    if zipfile.is_zipfile(path):
        results = list(fickling.scan_zip_archive(path, graceful=True).values())
    else:
        results = [fickling.scan_file(path, graceful=True)]
    if all(result.errors and not result.results for result in results):
        raise RuntimeError(results[0].errors[0] if results else "nothing scanned")
    text = " ".join(str(item.to_dict()) for result in results for item in result.results)
    return any(not result.is_safe for result in results), text


def ask_torch_weights_only(path):
    import pickle

    import torch

    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        return True, str(error)
    return False, ""


def spellings(qualified: str) -> set[str]:
    """The ways a tool may write one callable: module.name, Python 2's names (protocol 2 pickles
    write `__builtin__.eval`; torch.load maps them back), and fickling's `from module import name`."""
    import _compat_pickle

    found = {qualified}
    for module, name in _splits(qualified):
        for m, n in {(module, name), _compat_pickle.REVERSE_NAME_MAPPING.get((module, name), (module, name)),
                     (_compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module), name)}:
            found |= {f"{m}.{n}", f"from {m} import {n}"}
    return found


def _splits(qualified: str):
    parts = qualified.split(".")
    return [(".".join(parts[:cut]), ".".join(parts[cut:])) for cut in range(1, len(parts))]


def is_named(text: str, names) -> bool:
    return any(spelling in text for name in names for spelling in spellings(name))


TOOLS = {"prunescope": ask_prunescope, "picklescan": ask_picklescan, "fickling": ask_fickling,
         "torch.load(weights_only=True)": ask_torch_weights_only}


def available(name: str) -> str | None:
    import importlib.util

    module = {"picklescan": "picklescan", "fickling": "fickling"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module})"
    return None


def main() -> int:
    import hostile_corpus as corpus

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as root:
        sentinels = os.path.join(root, "sentinels")
        os.makedirs(sentinels)
        malicious = corpus.build_malicious(os.path.join(root, "malicious"), sentinels)
        benign = corpus.build_benign(os.path.join(root, "benign"))
        corpus.run_under_torch_load([sample.path for sample in malicious], root)
        time.sleep(2)  # Popen's children finish on their own
        live = sum(os.path.exists(os.path.join(sentinels, f"PWNED-{sample.id}")) for sample in malicious)
        for name in os.listdir(sentinels):
            os.unlink(os.path.join(sentinels, name))
        origins = {}
        for sample in malicious:
            origins[sample.origin] = origins.get(sample.origin, 0) + 1
        print(f"corpus: {len(malicious)} malicious ({', '.join(f'{n} {o}' for o, n in sorted(origins.items()))}), "
              f"{len(benign)} benign; torch.load(weights_only=False) ran {live} of {len(malicious)} payloads")
        print(f"{'tool':32} {'detected':>9} {'named':>7} {'alarms':>7} {'crashes':>8} {'ran':>4} {'seconds':>8}")
        for tool, ask in TOOLS.items():
            missing = available(tool)
            if missing:
                print(f"{tool:32} not measured: {missing}")
                continue
            detected = named = alarms = crashes = 0
            unnamed = []
            start = time.perf_counter()
            for sample in malicious + benign:
                try:
                    alarm, text = ask(sample.path)
                except Exception:  # noqa: BLE001 - the tool failed on this file
                    crashes += 1
                    continue
                if sample.malicious:
                    detected += alarm
                    if alarm and is_named(text, sample.names):
                        named += 1
                    else:
                        unnamed.append(sample.id)
                else:
                    alarms += alarm
            seconds = time.perf_counter() - start
            ran = len(os.listdir(sentinels))
            print(f"{tool:32} {detected:>5}/{len(malicious):<3} {named:>3}/{len(malicious):<3} "
                  f"{alarms:>3}/{len(benign):<3} {crashes:>8} {ran:>4} {seconds:>8.1f}")
            if unnamed and "-v" in sys.argv:
                print("   not named:", ", ".join(unnamed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
