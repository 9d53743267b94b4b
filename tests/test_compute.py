"""Compute cost: CPU-seconds of the process and its children (live and exited), peak memory, the
energy estimate, and the counters carried across a resume."""

import json
import subprocess
import sys

import pytest

from contrl.api import train
from contrl.record.compute import ComputeMeter

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\nimport sys; sys.stdin.read()"


def test_meter_counts_a_live_child_then_the_same_child_once_it_has_exited():
    meter = ComputeMeter()
    child = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0)], stdin=subprocess.PIPE)
    # the child burns exactly 1 CPU-second, then waits for stdin (alive, idle)
    import time

    deadline = time.time() + 60
    while meter.cpu() < 1.0 and time.time() < deadline:
        time.sleep(0.05)
    live = meter.cpu()
    assert 1.0 <= live < 1.0 + 0.6, live  # + the interpreter's start-up and this process's own time
    child.communicate(b"")  # exits and is waited for: its time moves to the children's totals
    after = meter.cpu()
    assert live - 0.05 <= after < live + 0.3, (live, after)  # counted once, not twice, not lost
    assert meter.sample_memory() > 10


def test_run_summary_reports_cost_and_energy(tmp_path):
    agent = train("ppo", "CartPole-v1", steps=2048, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
                  overrides={"n_envs": 2, "n_steps": 512, "batch_size": 256, "n_epochs": 1, "eval_episodes": 1,
                             "final_eval_episodes": 1, "power_watts": 12.0})
    s = agent.summary
    assert s["cpu_s"] > 0 and s["wall_s"] > 0 and s["peak_mem_mb"] > 50
    assert s["power_watts"] == 12.0 and s["energy_wh"] == pytest.approx(s["cpu_s"] * 12.0 / 3600)
    rows = (tmp_path / "run" / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["cpu_s"]) > 0 and float(last["peak_mem_mb"]) > 50 and float(last["energy_wh"]) > 0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["peak_mem_mb"] == s["peak_mem_mb"]


def test_no_energy_without_power_watts(tmp_path):
    agent = train("ppo", "CartPole-v1", steps=1024, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
                  overrides={"n_envs": 2, "n_steps": 512, "batch_size": 256, "n_epochs": 1, "eval_episodes": 1,
                             "final_eval_episodes": 0})
    assert "energy_wh" not in agent.summary and "power_watts" not in agent.summary


def test_a_run_holds_numpys_blas_to_its_threads(tmp_path):
    """numpy's OpenBLAS splits the acting loop's larger products across every core; with the other
    core busy that made ACER act 5x slower. A run holds the BLAS numpy calls to ``threads``, as torch."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    threadpool_limits(limits=2, user_api="blas")  # what a 2-core machine starts with
    torch.set_num_threads(2)
    assert blas_threads() and blas_threads() != {1}
    train("ppo", "CartPole-v1", steps=256, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
          overrides={"n_envs": 1, "n_steps": 128, "batch_size": 64, "final_eval_episodes": 0})
    assert blas_threads() == {1} and torch.get_num_threads() == 1
