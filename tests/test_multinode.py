"""Two "machines" on loopback: `accelerate launch --config_file accelerate_configs/multinode.yaml`, started
once per node with its own ``--machine_rank`` (what examples/slurm_multinode.sbatch does with srun), one
CPU process per node, DeepSpeed ZeRO-1 BF16 over gloo. Both nodes write into one output directory, as they
would on a cluster's shared filesystem.

Killing a node: torchrun starts every worker in a session of its own, so the launcher's process group does
not contain the training process. Each node's processes carry a unique environment tag instead, and a
"dead machine" is every process with its tag.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from .conftest import launch_cmd, start_delay_env, start_logged, tiny_flags

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TAG = "MAE_TRAINER_TEST_NODE"
# What the surviving node prints when its peer is gone: our one-line report quoting gloo's first line (a
# closed socket, or a collective that timed out after --dist-timeout).
LOST_PEER = re.compile(
    r"mae-trainer: run stopped: lost contact with the other ranks \(.*(Connection|Timed out)"
)
STARTUP_S = 300  # both nodes up and training (first DeepSpeed run on a machine JIT-builds an op, ~60 s)
DIST_TIMEOUT_S = 15  # every run here; the slow-start test's late rank waits longer than this
LATE_S = 20  # how late machine 1's rank starts in the slow-start test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, rank: int, proc: subprocess.Popen, log: Path, tag: str):
        self.rank, self.proc, self.log, self.tag = rank, proc, log, tag

    def output(self) -> str:
        return self.log.read_text(errors="replace").replace("\r", "\n")

    def processes(self) -> list[psutil.Process]:
        """The launcher, torchrun's agent and the worker (in its own session): all carry the tag."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(TAG) == self.tag:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def signal_all(self, sig: int) -> None:
        for p in self.processes():
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass


@contextmanager
def two_nodes(tmp_path: Path, *args: str, node_env: dict[int, dict[str, str]] | None = None):
    """Start machine 0 and machine 1 (``node_env[rank]``: extra environment of one); on exit SIGKILL
    whatever either left behind."""
    port, run_id = free_port(), uuid.uuid4().hex
    nodes: list[Node] = []
    try:
        for rank in (0, 1):
            cmd = launch_cmd(
                "multinode.yaml",
                "pretrain",
                *args,
                launcher_args=(
                    *("--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"),
                    *("--main_process_port", str(port), "--num_machines", "2", "--num_processes", "2"),
                ),
            )
            env = {"PYTHONUNBUFFERED": "1", TAG: f"{run_id}-{rank}", **(node_env or {}).get(rank, {})}
            proc = start_logged(cmd, tmp_path / f"node{rank}.log", env)
            nodes.append(Node(rank, proc, proc.log, f"{run_id}-{rank}"))
        yield nodes
    finally:
        for node in nodes:
            node.signal_all(signal.SIGKILL)  # SIGKILL also ends a stopped process
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.proc.wait(timeout=60)
        for node in nodes:  # the workers are not our children: give them time to vanish
            deadline = time.monotonic() + 30
            while node.processes() and time.monotonic() < deadline:
                time.sleep(0.2)


def tails(nodes: list[Node], chars: int = 3000) -> str:
    return "".join(f"\n--- node {n.rank} (rc {n.proc.poll()}) ---\n{n.output()[-chars:]}" for n in nodes)


def records(out: Path) -> list[dict]:
    """The complete lines of ``metrics.jsonl``; read while rank 0 appends, the last one may be half
    written."""
    path = out / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def both_succeed(nodes: list[Node]) -> None:
    """Wait for both nodes to finish training; fail unless both exit 0."""
    for node in nodes:
        try:
            node.proc.wait(timeout=STARTUP_S + 120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {node.rank} still running after {STARTUP_S + 120} s" + tails(nodes))
    assert [n.proc.returncode for n in nodes] == [0, 0], tails(nodes)


FLAGS = tiny_flags(epochs=100, warmup_epochs=0)


def test_two_machines_one_slow_to_start_train_and_save_one_model(demo_beton, tmp_path):
    """Machine 1's rank starts 20 s late (a loaded node importing torch), past --dist-timeout 15 but within
    the rendezvous bound (10 min, training/rendezvous.py): machine 0 waits for it, then both train, write
    a checkpoint with one ZeRO shard each, and machine 0 writes the one model from both machines' shards.
    That --dist-timeout still bounds every collective afterwards: the lost-machine tests below."""
    out, marker = tmp_path / "run", tmp_path / "delayed"
    args = ("--data", str(demo_beton), "--output-dir", str(out), "--max-steps", "4", "--save-every", "2")
    start = time.monotonic()
    delayed = {1: start_delay_env(1, LATE_S, marker)}
    with two_nodes(tmp_path, *args, "--dist-timeout", str(DIST_TIMEOUT_S), *FLAGS, node_env=delayed) as nodes:
        both_succeed(nodes)
        main_log = nodes[0].output()
    took = time.monotonic() - start
    print(f"rank 1 started {LATE_S} s late, --dist-timeout {DIST_TIMEOUT_S}: 4 steps, saved in {took:.0f} s")
    assert [line.split()[1] for line in marker.read_text().splitlines()] == [str(LATE_S)]  # rank 1's only
    assert "on 2 process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in main_log

    # one model, written once by machine 0 from both machines' ZeRO shards
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    shards = sorted((out / "checkpoints" / "step_00000002" / "pytorch_model").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # step 2's checkpoint; the final save's staging one is removed
    assert not (out / "checkpoints" / "final").exists()
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert weights and all(w.isfinite().all() for w in weights.values())
    lines = records(out)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in lines)


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_lost_machine_ends_the_run_within_dist_timeout(demo_beton, tmp_path, fault):
    """Machine 1 dies (SIGKILL: its sockets close) or hangs (SIGSTOP: sockets stay open, nothing arrives,
    like a frozen host or a cut network): machine 0 must exit non-zero, in bounded time, saying why."""
    out = tmp_path / "run"
    args = ("--data", str(demo_beton), "--output-dir", str(out), "--dist-timeout", str(DIST_TIMEOUT_S))
    bound = DIST_TIMEOUT_S + 45
    with two_nodes(tmp_path, *args, *FLAGS) as nodes:
        deadline = time.monotonic() + STARTUP_S
        while len(records(out)) < 2:  # both machines are past their first collective steps
            if any(n.proc.poll() is not None for n in nodes) or time.monotonic() > deadline:
                pytest.fail("training did not start" + tails(nodes))
            time.sleep(0.2)
        hit = time.monotonic()
        nodes[1].signal_all(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        try:
            rc = nodes[0].proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"machine 0 still running {bound} s after machine 1 was hit ({fault}), "
                f"--dist-timeout {DIST_TIMEOUT_S}" + tails(nodes)
            )
        took = time.monotonic() - hit
        output = nodes[0].output()
    print(f"{fault}: machine 0 exited {rc} after {took:.1f} s; its error: {LOST_PEER.search(output)}")
    assert rc != 0, output[-3000:]
    assert LOST_PEER.search(output), output[-5000:]
    assert not (out / "model.safetensors").exists()
