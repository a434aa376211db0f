"""Models named by Hub repo id or URL (issue #12): the HF cache (read, never written), the Hub and S3,
through the real clients (huggingface_hub, s3fs) talking to local servers that count what they send
(tests/servers.py). Runs go through `python -m prunescope`, as a user's would, so every environment
variable (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE) is read the way huggingface_hub reads it.

The base is shaped like Llama-3-8B where it matters for the budgets: the same 291 tensor names, 32
layers, 4 shards and a 24 KB shard index; only the widths are small (hidden 128) so tests stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from builders import remove_layers
from servers import HubServer, counting_moto_server

pytest.importorskip("huggingface_hub")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

REPO = "meta-llama/Meta-Llama-3-8B"
BUCKET = "models"
REMOVED = [5, 17]
STRUCTURE_REQUESTS, STRUCTURE_BYTES, FINGERPRINT_BYTES = 8, 128_000, 2_000_000
DOWNLOAD = f'hf download {REPO} --include "*.json" --include "*.safetensors"'


def _llama3_shaped():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=128, intermediate_size=448, num_hidden_layers=32, num_attention_heads=4,
                         num_key_value_heads=1, vocab_size=1024, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(folder, parameter count) of the base and of a ShortGPT-style pruned copy, saved by transformers."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = _llama3_shaped()
    model.save_pretrained(root / "base", max_shard_size="4MB")
    base_params = model.num_parameters()
    with torch.no_grad():  # a Wanda-like model too: zeros inside unchanged shapes, for --sparsity
        model.model.layers[3].mlp.down_proj.weight[:, ::2] = 0
    model.save_pretrained(root / "sparse", max_shard_size="4MB")
    sparse_nonzero = sum(int(parameter.count_nonzero()) for parameter in model.parameters())
    remove_layers(model, REMOVED)
    model.config.num_hidden_layers = 30
    model.save_pretrained(root / "pruned")
    assert len([name for name in os.listdir(root / "base") if name.endswith(".safetensors")]) == 4
    return {"root": root, "base": (root / "base", base_params), "pruned": (root / "pruned", model.num_parameters()),
            "sparse_nonzero": sparse_nonzero}


@pytest.fixture(scope="module")
def hub(models):
    server = HubServer()
    server.add_repo(REPO, str(models["base"][0]))
    server.add_repo("meta-llama/Gated-Llama", str(models["base"][0]), gated=True)
    server.add_repo("lab/experiments", str(models["root"]))  # models in subfolders: base/, pruned/, sparse/
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(models):
    import boto3

    server = counting_moto_server()
    server.start()
    host, port = server.get_host_and_port()
    server.url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=server.url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for name in ("base", "pruned", "sparse"):
        folder = models[name][0] if name != "sparse" else models["root"] / "sparse"
        for file in os.listdir(folder):
            client.upload_file(str(folder / file), BUCKET, f"llama/{name}/{file}")
    torch.save(torch.nn.Linear(4, 4).state_dict(), models["root"] / "pytorch_model.bin")
    client.upload_file(str(models["root"] / "pytorch_model.bin"), BUCKET, "pickled/pytorch_model.bin")
    client.upload_file(str(models["base"][0] / "config.json"), BUCKET, "pickled/config.json")
    time.sleep(0.3)  # the counting wrapper logs a request once its response has been sent
    yield server
    server.stop()


def run(args, tmp_path, hub=None, s3=None, offline=False, cache=None, check=False, **extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "AWS_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(cache or tmp_path / "hf_cache"),
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1",
               XDG_CACHE_HOME=str(tmp_path / "xdg"), **extra)
    env.pop("PRUNESCOPE_CACHE", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    if s3 is not None:
        env.update(AWS_ENDPOINT_URL=s3.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
    result = subprocess.run([sys.executable, "-m", "prunescope", *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _header_end(path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _phases(log, folder) -> tuple[list, list]:
    """(structure requests, fingerprint requests): a range of a .safetensors file that starts past its
    header is a fingerprint page; everything else (listing, config, index, headers) is structure."""
    structure, pages = [], []
    for entry in log.entries:
        name = entry[1].split("?")[0].rsplit("/", 1)[-1]
        start = int(entry[4][len("bytes="):].split("-")[0]) if entry[4] else 0
        is_page = name.endswith(".safetensors") and start >= _header_end(folder / name)
        (pages if is_page else structure).append(entry)
    return structure, pages


def _assert_budget(log, folder):
    structure, pages = _phases(log, folder)
    structure_bytes, page_bytes = sum(e[3] for e in structure), sum(e[3] for e in pages)
    assert len(structure) <= STRUCTURE_REQUESTS, structure
    assert structure_bytes <= STRUCTURE_BYTES, structure
    assert page_bytes <= FINGERPRINT_BYTES
    weights = [entry for entry in log.entries if entry[1].split("?")[0].endswith(".safetensors")]
    assert weights and all(entry[2] == 206 and entry[4] for entry in weights), "a weight file read without a Range"
    print(f"\nstructure: {len(structure)} requests, {structure_bytes} bytes; "
          f"fingerprints: {len(pages)} requests, {page_bytes} bytes")
    return len(structure), structure_bytes, len(pages), page_bytes


def test_s3_llama3_shaped_base_within_budget(models, s3, tmp_path):
    folder, params = models["base"]
    s3.log.reset()
    result = run(["inspect", f"s3://{BUCKET}/llama/base", "--json"], tmp_path, s3=s3, check=True)
    data = json.loads(result.stdout)
    assert data["total_params"] == params
    assert data["layer_summary"]["num_layers"] == 32
    local = json.loads(run(["inspect", folder, "--json"], tmp_path, check=True).stdout)
    assert [layer["fingerprint"] for layer in data["layers"]] == [layer["fingerprint"] for layer in local["layers"]]
    _assert_budget(s3.log, folder)


def test_hub_repo_online_within_budget_then_from_prunescope_cache(models, hub, tmp_path):
    folder, params = models["base"]
    hub.log.reset()
    data = json.loads(run(["inspect", REPO, "--json"], tmp_path, hub=hub, check=True).stdout)
    assert data["total_params"] == params
    _assert_budget(hub.log, folder)
    assert not (tmp_path / "hf_cache").exists()  # never downloads into the HF cache

    hub.log.reset()  # the same commit again: the analysis kept in prunescope's cache, no header read
    again = json.loads(run(["inspect", REPO, "--json"], tmp_path, hub=hub, check=True).stdout)
    assert again["layers"] == data["layers"]
    assert hub.log.requests == 2 and all("/api/" in entry[1] for entry in hub.log.entries), hub.log.entries
    commit = hub.repos[REPO].commit
    assert os.listdir(tmp_path / "xdg" / "prunescope" / "hub" / "models--meta-llama--Meta-Llama-3-8B") == [commit]


def test_hub_subfolder_url(models, hub, tmp_path):
    data = json.loads(run(["inspect", "hf://lab/experiments@main/pruned", "--json"], tmp_path, hub=hub,
                          check=True).stdout)
    assert data["total_params"] == models["pruned"][1]
    assert data["layer_summary"]["num_layers"] == 30


def test_s3_model_against_hub_base_finds_removed_layers(models, hub, s3, tmp_path):
    out = tmp_path / "out"
    result = run(["analyze", "--model", f"s3://{BUCKET}/llama/pruned", "--model", REPO, "--base_model", REPO,
                  "--output_dir", out], tmp_path, hub=hub, s3=s3, check=True)
    pruned = json.loads((out / "pruned" / "analysis" / "model_structure.json").read_text())
    assert pruned["total_params"] == models["pruned"][1]
    assert pruned["checkpoint"]["path"] == f"s3://{BUCKET}/llama/pruned"
    comparison = json.loads((out / "pruned" / "analysis" / "model_comparison.json").read_text())
    assert comparison["layer_matching"]["method"] == "content"  # fingerprints read remotely match the base's
    assert comparison["layer_matching"]["removed_original_layers"] == REMOVED
    base = json.loads((out / "Meta-Llama-3-8B" / "analysis" / "model_structure.json").read_text())
    assert base["source"]["origin"]["repo"] == REPO
    assert base["source"]["origin"]["commit"] == hub.repos[REPO].commit
    assert "✗" not in result.stdout

    again = run(["analyze", "--model", f"s3://{BUCKET}/llama/pruned", "--base_model", REPO, "--output_dir", out],
                tmp_path, hub=hub, s3=s3, check=True)
    assert "(up to date, reused)" in again.stdout


def _snapshot_download(hub, cache, patterns):
    code = ("from huggingface_hub import snapshot_download; "
            f"print(snapshot_download({REPO!r}, cache_dir={str(cache)!r}, allow_patterns={patterns!r}))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def _tree(root) -> dict:
    """Every path under `root` with its kind, symlink target, bytes' checksum and mtime."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[path] = ("dir", info.st_mtime_ns)
            else:
                with open(path, "rb") as handle:
                    state[path] = ("file", hashlib.sha256(handle.read()).hexdigest(), info.st_mtime_ns)
    return state


def _cached_files(cache) -> set:
    from huggingface_hub import scan_cache_dir

    return {(repo.repo_id, revision.commit_hash, file.file_name, file.size_on_disk)
            for repo in scan_cache_dir(cache).repos for revision in repo.revisions for file in revision.files}


def test_offline_from_hf_cache_writes_nothing_there(models, hub, tmp_path):
    folder, params = models["base"]
    server = HubServer()
    commit = server.add_repo(REPO, str(folder))
    server.start()
    cache = tmp_path / "hf_cache"
    snapshot = _snapshot_download(server, cache, ["*.json", "*.safetensors"])
    server.stop()  # from here on nothing can be fetched
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    os.symlink(snapshot, models_dir / "llama-symlinked")  # a model folder that is a symlink into the cache
    before, files_before = _tree(cache), _cached_files(cache)

    out = tmp_path / "out"
    result = run(["analyze", "--models_dir", models_dir, "--model", REPO, "--base_model", REPO, "--output_dir", out],
                 tmp_path, offline=True, cache=cache, check=True)
    assert _tree(cache) == before
    assert _cached_files(cache) == files_before
    for name in ("llama-symlinked", "Meta-Llama-3-8B"):
        data = json.loads((out / name / "analysis" / "model_structure.json").read_text())
        assert data["total_params"] == params
        assert data["source"]["origin"] == {"repo": REPO, "commit": commit}
    assert "✗" not in result.stdout

    hub.log.reset()  # online, with the Hub serving the same commit: a complete snapshot needs no request
    online = json.loads(run(["inspect", REPO, "--json"], tmp_path, hub=hub, cache=cache, check=True).stdout)
    assert online["total_params"] == params and hub.log.requests == 0
    assert _tree(cache) == before


def test_offline_missing_says_what_to_download_and_stops(models, hub, tmp_path):
    out = tmp_path / "out"
    result = run(["analyze", "--model", models["pruned"][0], "--base_model", REPO, "--output_dir", out],
                 tmp_path, offline=True)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if "✗" in line]
    assert len(errors) == 1 and DOWNLOAD in errors[0] and "not in the Hugging Face cache" in errors[0]
    assert not out.exists()  # stopped before analysing anything

    unreachable = run(["inspect", REPO], tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # online, no server
    assert unreachable.returncode == 1
    assert "cannot be reached" in unreachable.stderr and DOWNLOAD in unreachable.stderr

    cache = tmp_path / "json_only"
    _snapshot_download(hub, cache, ["*.json"])
    result = run(["inspect", REPO], tmp_path, offline=True, cache=cache)
    assert result.returncode == 1
    assert "cached without" in result.stderr and DOWNLOAD in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_server_ignoring_ranges_is_refused(hub, tmp_path):
    hub.ignore_ranges = True
    try:
        result = run(["inspect", REPO], tmp_path, hub=hub)
    finally:
        hub.ignore_ranges = False
    assert result.returncode == 1 and "ignored the byte range" in result.stderr


def test_gated_repo_says_accept_the_licence(hub, tmp_path):
    result = run(["inspect", "meta-llama/Gated-Llama"], tmp_path, hub=hub)
    assert result.returncode == 1
    assert "accept the licence on the Hub and set HF_TOKEN" in result.stderr


def test_sparsity_on_remote_needs_remote_scan(models, s3, tmp_path):
    url = f"s3://{BUCKET}/llama/sparse"
    sizes = sum(os.path.getsize(models["root"] / "sparse" / name) for name in os.listdir(models["root"] / "sparse")
                if name.endswith(".safetensors"))
    s3.log.reset()
    refused = run(["inspect", url, "--sparsity"], tmp_path, s3=s3)
    assert refused.returncode == 1
    assert f"({sizes} bytes)" in refused.stderr and "--remote-scan" in refused.stderr
    assert s3.log.requests == 1  # the listing only

    scanned = run(["inspect", url, "--sparsity", "--remote-scan", "--json", "--device", "cpu"], tmp_path, s3=s3,
                  check=True)
    assert json.loads(scanned.stdout)["nonzero_params"] == models["sparse_nonzero"]
    assert os.listdir(tmp_path / "xdg" / "prunescope") == []  # the temporary copies are gone


def test_remote_pickle_and_missing_extra_are_one_line(s3, tmp_path):
    result = run(["inspect", f"s3://{BUCKET}/pickled"], tmp_path, s3=s3)
    assert result.returncode == 1 and "download it first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    blocked = (f"import sys; sys.modules['s3fs'] = None; sys.path.insert(0, {os.path.join(os.path.dirname(__file__), '..', 'src')!r}); "
               "from prunescope.cli import main; sys.exit(main(['inspect', 's3://models/x']))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'pip install "prunescope[s3]"' in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_long_header_gets_a_second_range(s3, tmp_path):
    """A single file has no index to size its first range: 64 KiB, then exactly the rest of its header."""
    import boto3
    from safetensors.torch import save_file

    tensors = {f"model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight": torch.zeros(1, 1)
               for i in range(8) for j in range(100)}
    path = tmp_path / "many.safetensors"
    save_file(tensors, str(path))
    assert _header_end(path) > 64 * 1024
    client = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.upload_file(str(path), BUCKET, "long/many.safetensors")
    time.sleep(0.3)
    s3.log.reset()
    run(["inspect", f"s3://{BUCKET}/long/many.safetensors"], tmp_path, s3=s3)
    header_reads = [entry for entry in s3.log.entries
                    if entry[4] and int(entry[4][len("bytes="):].split("-")[0]) < _header_end(path)]
    assert [entry[4] for entry in header_reads] == [f"bytes=0-{64 * 1024 - 1}",
                                                   f"bytes={64 * 1024}-{_header_end(path) - 1}"]


def test_local_paths_import_no_remote_client(models, tmp_path):
    code = ("import sys; from prunescope.cli import main; main(['inspect', sys.argv[1]]); "
            "print(sorted(name for name in ('huggingface_hub', 'fsspec', 's3fs') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(models["base"][0])], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")})
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_single_file_over_http(hub, tmp_path):
    """An http(s):// URL of one .safetensors file: its size from one HEAD, then exact ranges."""
    from safetensors.torch import save_file

    tensors = {"model.embed_tokens.weight": torch.randn(10, 64), "model.layers.0.mlp.up_proj.weight": torch.randn(96, 64)}
    (tmp_path / "single").mkdir()
    save_file(tensors, str(tmp_path / "single" / "model.safetensors"))
    hub.add_repo("lab/single", str(tmp_path / "single"))
    hub.log.reset()
    url = f"{hub.url}/lab/single/resolve/main/model.safetensors"
    data = json.loads(run(["inspect", url, "--json"], tmp_path, check=True).stdout)
    assert data["total_params"] == sum(tensor.numel() for tensor in tensors.values())
    assert [entry[0] for entry in hub.log.entries] == ["HEAD", "GET", "GET"]  # size, header, one page
    assert all(entry[2] == 206 for entry in hub.log.entries[1:])
