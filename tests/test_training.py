"""Determinism, save/load, resume equivalence, run folder contents."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import contrl
from contrl.api import train
from tests.conftest import ROOT, flat_params

TINY = {"n_envs": 4, "n_steps": 64, "batch_size": 64, "n_epochs": 2, "eval_episodes": 2, "final_eval_episodes": 2}


def test_same_seed_gives_identical_parameters(tmp_path):
    a = train("ppo", "CartPole-v1", steps=2048, seed=3, out=tmp_path / "a", quiet=True, tensorboard=False, overrides=TINY)
    b = train("ppo", "CartPole-v1", steps=2048, seed=3, out=tmp_path / "b", quiet=True, tensorboard=False, overrides=TINY)
    c = train("ppo", "CartPole-v1", steps=2048, seed=4, out=tmp_path / "c", quiet=True, tensorboard=False, overrides=TINY)
    assert torch.equal(flat_params(a.model), flat_params(b.model))
    assert not torch.equal(flat_params(a.model), flat_params(c.model))


def test_continuous_with_normalisation_is_deterministic(tmp_path):
    kw = dict(steps=2048, seed=0, quiet=True, tensorboard=False,
              overrides={**TINY, "norm_obs": True, "norm_reward": True})
    a = train("ppo", "Pendulum-v1", out=tmp_path / "a", **kw)
    b = train("ppo", "Pendulum-v1", out=tmp_path / "b", **kw)
    assert torch.equal(flat_params(a.model), flat_params(b.model))
    assert a.obs_norm is not None and np.array_equal(a.obs_norm.rms.mean, b.obs_norm.rms.mean)


def test_run_folder_contents_and_save_load_round_trip(tmp_path):
    run = tmp_path / "run"
    agent = train("ppo", "Pendulum-v1", steps=2048, seed=0, out=run, quiet=True,
                  overrides={**TINY, "norm_obs": True})
    for name in ("config.json", "progress.csv", "episodes.csv", "summary.json", "checkpoints/latest.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    header = (run / "progress.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "episode_return", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                "explained_variance", "lr", "steps_per_s"):
        assert col in header
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cpu_s"] > 0 and summary["wall_s"] > 0 and "final_eval" in summary
    loaded = contrl.load(run / "checkpoints" / "latest.pt")
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    assert np.array_equal(agent.act(obs), loaded.act(obs))
    assert np.array_equal(loaded.obs_norm.rms.mean, agent.obs_norm.rms.mean)
    single = loaded.act(obs[0])
    assert single.shape == (1,)
    ev = loaded.evaluate(episodes=3, seed=5)
    assert ev["episodes"] == 3 and ev == loaded.evaluate(episodes=3, seed=5)


def _train_cmd(out, algo, env, steps, extra=()):
    return [sys.executable, "-m", "contrl", "train", algo, "--env", env, "--steps", str(steps), "--seed", "7",
            "--out", str(out), "--no-tensorboard", *extra]


def test_eval_deterministic_false_samples_the_evaluations(tmp_path):
    """eval_deterministic=false: the periodic and final evaluations sample actions (as `contrl eval
    --stochastic`), from the evaluation's seeded generator; the summary says so."""
    run = tmp_path / "run"
    train("ppo", "CartPole-v1", steps=1024, seed=0, out=run, quiet=True, tensorboard=False,
          overrides={**TINY, "eval_deterministic": False, "final_eval_episodes": 8})
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_eval"]["deterministic"] is False
    agent = contrl.load(run / "checkpoints" / "latest.pt")
    sampled = agent.evaluate(episodes=8, seed=20_000, deterministic=False)
    assert summary["final_eval"]["mean"] == sampled["mean"]
    # the untrained policy's mode (one action from every start) and its samples end differently
    assert agent.evaluate(episodes=8, seed=20_000)["mean"] != sampled["mean"]


@pytest.mark.parametrize("algo,env,steps,extra", [
    ("ppo", "CartPole-v1", 15_000, ["--set", "n_envs=4", "n_steps=128", "batch_size=128", "n_epochs=2", "eval_episodes=1",
                     "final_eval_episodes=1", "checkpoint_every=512"]),
    ("ppo", "Pendulum-v1", 12_000, ["--set", "n_envs=2", "n_steps=128", "batch_size=64", "n_epochs=2", "eval_episodes=1",
                     "final_eval_episodes=1", "norm_obs=true", "norm_reward=true", "vec=subprocess",
                     "checkpoint_every=256"]),
    ("a2c", "Pendulum-v1", 20_000, ["--set", "n_envs=4", "eval_episodes=1", "final_eval_episodes=1",
                                     "norm_obs=true", "norm_reward=true", "checkpoint_every=1000"]),
    # recurrent: the carried LSTM state is part of the checkpoint
    ("ppo", "contrl/CartPoleNoVel-v1", 20_000, ["--net", "lstm", "--set", "n_steps=64", "batch_size=128",
                                                "n_epochs=2", "net.seq_len=16", "eval_episodes=1",
                                                "final_eval_episodes=1", "checkpoint_every=256"]),
    # acer: the replay memory (wrapped around), the average network and the optimiser are saved
    ("acer", "Pendulum-v1", 16_000, ["--set", "n_envs=4", "replay_start=400", "buffer_size=2000", "eval_episodes=1",
                                     "final_eval_episodes=1", "checkpoint_every=800"]),
])
def test_ctrl_c_then_resume_equals_uninterrupted(tmp_path, algo, env, steps, extra):
    """SIGINT mid-run saves a checkpoint and exits 130; --resume ends with exactly the
    parameters of the uninterrupted run with the same seed."""
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = subprocess.run(_train_cmd(tmp_path / "full", algo, env, steps, extra), capture_output=True, text=True,
                          env=env_vars, timeout=600)
    assert full.returncode == 0, full.stderr

    part = tmp_path / "part"
    p = subprocess.Popen(_train_cmd(part, algo, env, steps, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env_vars, start_new_session=True)
    deadline = time.time() + 120
    while not (part / "checkpoints" / "latest.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group, env workers included
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err, err
    meta = json.loads(torch.load(part / "checkpoints" / "latest.pt", weights_only=True)["train_state"]["meta"])
    interrupted_at = meta["step"]
    assert 0 < interrupted_at < steps

    res = subprocess.run([sys.executable, "-m", "contrl", "train", "--resume", str(part), "--no-tensorboard"],
                         capture_output=True, text=True, env=env_vars, timeout=600)
    assert res.returncode == 0, res.stderr
    a = contrl.load(tmp_path / "full", prefer="latest")
    b = contrl.load(part, prefer="latest")
    assert torch.equal(flat_params(a.model), flat_params(b.model))
    # the compute counters continue from the checkpoint's
    summary = json.loads((part / "summary.json").read_text())
    assert summary["cpu_s"] > meta["cpu_s"] and summary["wall_s"] > meta["wall_s"]
    assert summary["peak_mem_mb"] >= meta["peak_mem_mb"] > 0
    # the logs match too: the interrupted process's extra rows were dropped
    assert (tmp_path / "full" / "episodes.csv").read_text().count("\n") == (part / "episodes.csv").read_text().count("\n")


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(tmp_path):
    """SIGTERM (what schedulers and `kill` send) is a clean stop, as Ctrl-C: the current update
    ends, latest.pt is saved, one line says how to resume, exit 128 + 15."""
    run = tmp_path / "run"
    p = subprocess.Popen(_train_cmd(run, "ppo", "CartPole-v1", 1_000_000, ["--set", "n_envs=4", "n_steps=64",
                                                                          "batch_size=256", "checkpoint_every=256"]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err, err
    at = json.loads(torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["train_state"]["meta"])["step"]
    res = subprocess.run([sys.executable, "-m", "contrl", "train", "--resume", str(run), "--steps", str(at + 512),
                          "--no-tensorboard"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == at + 512
