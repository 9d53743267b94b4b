"""The asynchronous (Hogwild) runner: with one worker it computes exactly what the synchronous
runner computes (A3C == A2C, async ACER == ACER); the workers' observation statistics merge into
one; under faults a killed worker is restarted, Ctrl-C leaves a loadable checkpoint and no
processes, exhausted retries stop with one line, resume restores the global model and the
shared optimiser."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import contrl
from contrl.api import train
from contrl.envs.normalize import RunningMeanStd, WorkerObsNormalizer, merged_obs_stats, rms_to_row
from tests.conftest import ROOT, flat_params
from tests.test_cli import one_line_error

SMALL = ["--set", "eval_episodes=2", "final_eval_episodes=2", "n_steps=5"]


def _popen(out: Path, steps: int, *extra):
    cmd = [sys.executable, "-m", "contrl", "train", "a3c", "--env", "CartPole-v1", "--steps", str(steps),
           "--workers", "2", "--out", str(out), "--no-tensorboard", *SMALL, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


def _worker_pids(run: Path) -> dict:
    """{worker index: [pids in start order]} from messages.log."""
    pids: dict = {}
    log = run / "messages.log"
    for line in (log.read_text().splitlines() if log.exists() else []):
        if " started (pid " in line:
            w = int(line.split("worker ")[1].split()[0])
            pids.setdefault(w, []).append(int(line.split("(pid ")[1].split(",")[0]))
    return pids


def _wait_for(cond, p, timeout=120):
    deadline = time.time() + timeout
    while not cond():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _opt_steps(ckpt: Path) -> int:
    st = torch.load(ckpt, weights_only=True)
    return int(st["train_state"]["rule"]["optimizer"]["step"])


@pytest.mark.parametrize("env,extra", [
    ("CartPole-v1", {"optimizer": "adam", "lr": 1e-3}),
    ("Pendulum-v1", {"norm_obs": True, "norm_reward": True, "optimizer": "rmsprop"}),  # shared obs statistics
    ("contrl/CartPoleNoVel-v1", {"net.type": "lstm", "net.critic_lstm": True}),  # state carried across segments
])
def test_a3c_with_one_worker_computes_exactly_what_a2c_computes(tmp_path, monkeypatch, env, extra):
    """The asynchronous machinery (local copy, gradients handed to the global model, shared
    optimiser state, shared obs statistics, global budget) adds nothing to the update rule:
    with one worker and the same seeds, A3C ends with A2C's parameters bit for bit. (A2C's Adam
    takes the foreach step here, as shared statistics do; its fused kernel is the same to float32
    rounding: tests/test_optim.py.)"""
    from contrl.algos.optim import Adam
    from contrl.config import build_config

    monkeypatch.setattr(Adam, "fused_kernel", False)
    ov = {"n_envs": 4, "n_steps": 5, "eval_episodes": 1, "final_eval_episodes": 0, **extra}
    kw = dict(steps=4000, seed=3, quiet=True, tensorboard=False)
    a = train("a2c", env, out=tmp_path / "a2c", overrides=ov, **kw)
    # a3c with every value a2c ran with (the two algorithms' presets for an env may differ)
    ran = build_config("a2c", env, overrides=ov).to_dict()
    same = {**{f"net.{k}": v for k, v in ran["net"].items()}, **{f"a2c.{k}": v for k, v in ran["a2c"].items()},
            **{k: ran[k] for k in ("norm_obs", "norm_reward", "clip_obs")}}
    b = train("a3c", env, out=tmp_path / "a3c", overrides={**ov, **same, "workers": 1}, **kw)
    assert json.loads((tmp_path / "a3c" / "config.json").read_text())["a2c"] == ran["a2c"]
    assert a.summary["steps"] == b.summary["steps"] == 4000
    assert torch.equal(flat_params(a.model), flat_params(b.model))


def test_sigkill_a_worker_is_restarted_and_the_run_completes(tmp_path):
    run = tmp_path / "run"
    p = _popen(run, 40_000)
    _wait_for(lambda: len(_worker_pids(run)) == 2, p)
    _wait_for(lambda: (run / "progress.csv").exists() and len((run / "progress.csv").read_text().splitlines()) > 2, p)
    victim = _worker_pids(run)[1][0]
    os.kill(victim, signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    log = (run / "messages.log").read_text()
    assert "worker 1 died (killed by signal 9); restarting it from the current global weights" in log, log
    assert len(_worker_pids(run)[1]) == 2 and len(_worker_pids(run)[0]) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["worker_restarts"] == [0, 1] and summary["steps"] >= 40_000
    seeds = [s for launch in summary["worker_launches"] for s in launch["env_seeds"]]
    assert len(seeds) == len(set(seeds)) == 3  # every launch seeded distinctly
    assert "final evaluation" in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_leaves_a_loadable_checkpoint_and_no_processes_then_resume(tmp_path, signum):
    """Ctrl-C, or SIGTERM (a scheduler's stop), to the whole group, workers included: the
    coordinator stops them, saves and exits 128 + the signal."""
    run = tmp_path / "run"
    p = _popen(run, 400_000)
    _wait_for(lambda: len(_worker_pids(run)) == 2, p)
    _wait_for(lambda: (run / "progress.csv").exists() and len((run / "progress.csv").read_text().splitlines()) > 2, p)
    os.killpg(p.pid, signum)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signum, err
    assert "--resume" in err and "Traceback" not in err, err
    pids = [pid for ps in _worker_pids(run).values() for pid in ps]
    assert pids and not any(_alive(pid) for pid in pids)
    agent = contrl.load(run, prefer="latest")
    assert agent.evaluate(episodes=1)["episodes"] == 1
    ckpt = run / "checkpoints" / "latest.pt"
    meta = json.loads(torch.load(ckpt, weights_only=True)["train_state"]["meta"])
    at, opt_at = meta["step"], _opt_steps(ckpt)
    assert 0 < at < 400_000 and opt_at > 0

    # resume: the step count, the global model and the shared optimiser go on from the checkpoint
    res = subprocess.run([sys.executable, "-m", "contrl", "train", "--resume", str(run), "--steps", str(at + 3000),
                          "--no-tensorboard"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert at + 3000 <= summary["steps"] < at + 3000 + 2 * 5 * 2
    assert opt_at < _opt_steps(ckpt) <= opt_at + summary["updates"]
    seeds_after = [s for launch in summary["worker_launches"] for s in launch["env_seeds"]]
    assert min(seeds_after) >= 2  # fresh seeds, not the first launch's again


def test_worker_failing_past_its_retries_stops_with_one_line(run_cli):
    p = run_cli("train", "a3c", "--env", "tests.faulty:Faulty", "--env-kwargs", "fault=raise", "after=30", "--steps",
                "100000", "--workers", "1", "--set", "max_restarts=1", "--out", "run", "--no-tensorboard", "--quiet")
    one_line_error(p, "worker 0 failed 2 times", "raised RuntimeError in step(): simulator exploded",
                   "no checkpoint was saved yet", code=1)


@pytest.mark.parametrize("env,extra", [
    ("CartPole-v1", {"replay_start": 200, "buffer_size": 1000}),
    ("Pendulum-v1", {"replay_start": 200, "buffer_size": 1000, "optimizer": "adam"}),
    ("contrl/CartPoleNoVel-v1", {"replay_start": 200, "buffer_size": 1000, "net.type": "lstm"}),  # replayed states
])
def test_async_acer_with_one_worker_computes_exactly_what_sync_acer_computes(tmp_path, monkeypatch, env, extra):
    """The same for ACER on both runners: one worker with its own replay memory, the shared
    model, optimiser statistics and average network ends with the synchronous run's parameters
    (and the same average network) bit for bit -- replayed updates, trust region and, for
    Pendulum, the SDN's sampled actions included. (Adam's foreach step in both, as above.)"""
    from contrl.algos.optim import Adam

    monkeypatch.setattr(Adam, "fused_kernel", False)
    ov = {"n_envs": 2, "n_steps": 10, "eval_episodes": 1, "final_eval_episodes": 0, **extra}
    kw = dict(steps=3000, seed=3, quiet=True, tensorboard=False)
    a = train("acer", env, out=tmp_path / "sync", overrides=ov, **kw)
    b = train("acer", env, out=tmp_path / "async", overrides={**ov, "runner": "async", "workers": 1}, **kw)
    assert a.summary["steps"] == b.summary["steps"] == 3000
    assert torch.equal(flat_params(a.model), flat_params(b.model))
    avg = [torch.load(tmp_path / run / "checkpoints" / "latest.pt", weights_only=True)["train_state"]["rule"]["avg"]
           for run in ("sync", "async")]
    assert all(torch.equal(avg[0][k], avg[1][k]) for k in avg[0])


def test_worker_obs_statistics_merge_into_one_shared_normaliser():
    """Two workers seeing different data, each publishing in its own row, end with the
    statistics of all the data together; a restarted worker continues its row."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(1.0, 2.0, (50, 3)), rng.normal(-1.0, 0.5, (30, 3))
    table = torch.zeros(3, 7, dtype=torch.float64)
    rms_to_row(RunningMeanStd((3,)), table.numpy()[0])
    w1, w2 = WorkerObsNormalizer(table, 1, 3, 10.0), WorkerObsNormalizer(table, 2, 3, 10.0)
    for i in range(0, 30, 10):
        w1(x1[i:i + 10].astype(np.float32), update=True)
    w1.sync()
    w1 = WorkerObsNormalizer(table, 1, 3, 10.0)  # worker 1 restarted: it goes on from its row
    for i in range(30, 50, 10):
        w1(x1[i:i + 10].astype(np.float32), update=True)
    w2(x2.astype(np.float32), update=True)
    w1.sync()
    w2.sync()
    ref = RunningMeanStd((3,))
    ref.update(np.concatenate([x1, x2]))
    got = merged_obs_stats(table.numpy())
    assert np.allclose(got.mean, ref.mean, atol=1e-5) and np.allclose(got.var, ref.var, atol=1e-5)
    assert math.isclose(got.count, ref.count)
    assert np.allclose(w2.rms.mean, ref.mean, atol=1e-5)  # the last to sync sees everything



def test_resume_restores_each_workers_reward_scaler(tmp_path):
    """norm_reward on Hogwild: each worker's reward statistics are in the checkpoint and a
    resumed run's workers continue them (the count goes on from where it was); the summary and
    messages.log say what a resume restores."""
    kw = dict(quiet=True, tensorboard=False)
    ov = {"norm_reward": True, "eval_episodes": 1, "final_eval_episodes": 0, "workers": 2}
    train("a3c", "Pendulum-v1", steps=6000, seed=0, out=tmp_path / "run", overrides=ov, **kw)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    before = torch.load(ckpt, weights_only=True)["train_state"]["reward_stats"]
    assert before.shape == (2, 3) and (before[:, 2] > 200).all(), before  # per worker: mean, var, count
    agent = train(resume=tmp_path / "run", steps=12_000, **kw)
    after = torch.load(ckpt, weights_only=True)["train_state"]["reward_stats"]
    assert (after[:, 2] > before[:, 2] + 200).all(), (before, after)
    assert "reward scaler" in agent.summary["resumed"]["restored"] and agent.summary["resumed"]["step"] >= 6000
    assert "resumed at step" in (tmp_path / "run" / "messages.log").read_text()
