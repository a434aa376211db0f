"""What both benchmarks share: the Llama tensor layout, the measuring runner, output parsing."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def llama_tensors(c):
    """(name, shape) in state_dict order, which is the order save_pretrained fills shards in."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    tensors = [("model.embed_tokens.weight", (v, h))]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return tensors


def mixtral_tensors(c):
    """Mixtral's tensors as its Hub files name them: the router `block_sparse_moe.gate` and per expert
    w1 (gate), w3 (up), w2 (down), in state_dict order."""
    h, i, v, experts = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_local_experts"]
    head_dim = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    tensors = [("model.embed_tokens.weight", (v, h))]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "block_sparse_moe.gate.weight", (experts, h))]
        for e in range(experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            tensors += [(q + "w1.weight", (i, h)), (q + "w2.weight", (h, i)), (q + "w3.weight", (i, h))]
        tensors += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return tensors


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


RUNNER_SCRIPT = '''
import os, sys, time  # nothing else: this process's own RSS is the floor of what it measures
# Spawns the measured command and reads its rusage with os.wait4. This small process is the parent on
# purpose: on Linux a child's ru_maxrss never reads below its parent's RSS at spawn time, so spawning
# from a bigger process would inflate the numbers. Prints "wall_seconds cpu_seconds peak_mb" per
# counted run; the first `warmup` runs are not counted.
log, warmup, repeat, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
for k in range(warmup + repeat):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])
    os.close(fd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"exit status {os.waitstatus_to_exitcode(status)}")
    if k >= warmup:
        print(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024)  # ru_maxrss is in KB on Linux
'''


def write_runner(root):
    """runner.py under root/scripts, where measure() expects it."""
    os.makedirs(os.path.join(root, "scripts"), exist_ok=True)
    with open(os.path.join(root, "scripts", "runner.py"), "w") as f:
        f.write(RUNNER_SCRIPT)


def measure(root, cmd, warmup=0, repeat=1, env=None):
    """Run `cmd` through runner.py: per counted run (wall s, cpu s, peak MB), and the last run's output."""
    runner, log = os.path.join(root, "scripts", "runner.py"), os.path.join(root, "child.log")
    result = subprocess.run([sys.executable, runner, log, str(warmup), str(repeat)] + cmd,
                            capture_output=True, text=True, env=env)
    with open(log) as f:
        out = f.read()
    if result.returncode != 0:
        sys.exit(f"measurement failed: {' '.join(cmd)}\n{result.stderr}{out[-3000:]}")
    return [[float(x) for x in line.split()] for line in result.stdout.splitlines()], out


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


def run_in_data_dir(prefix, run, args):
    """run(args, root) in a fresh folder under benchmarks/_data/ (git-ignored; one file system, so
    hardlinks work), removed afterwards unless --keep; exits 1 on failure with --strict."""
    data = os.path.join(HERE, "_data")
    os.makedirs(data, exist_ok=True)
    root = tempfile.mkdtemp(prefix=prefix, dir=data)
    try:
        failed = run(args, root)
    finally:
        if args.keep:
            print(f"\nkept: {root}")
        else:
            shutil.rmtree(root)
            if not os.listdir(data):
                os.rmdir(data)
    if args.strict and failed:
        sys.exit(1)
