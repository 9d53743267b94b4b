"""Faults: envs that return non-finite values, raise, or return the wrong shape, on every runner;
non-finite losses and gradients; a full disk; bad paths. Each ends as one line (exit 1), with
the traceback in messages.log, and checkpoints that still hold the last good, finite model, from
which --resume continues."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import contrl
from contrl.algos.a2c import A2C
from contrl.api import train
from contrl.config import A2CConfig, NetConfig
from contrl.errors import ContrlError, Fault, NonFinite
from contrl.nets.actor_critic import ActorCritic
from contrl.storage.rollout import Rollout
from tests.conftest import ROOT

ENV = "tests.faulty:Faulty"
SMALL = ["eval_episodes=1", "final_eval_episodes=1", "eval_every=256"]
RUNNERS = {  # 4 envs in all, or 2 (Hogwild); each starts its fault after `after` steps of its own: ~600 in all
    "sync": ("ppo", 150, ["--set", "vec=inprocess", "n_envs=4", "n_steps=32", "batch_size=64", "checkpoint_every=128"]),
    "subprocess": ("ppo", 150, ["--set", "vec=subprocess", "n_envs=4", "n_steps=32", "batch_size=64",
                                "checkpoint_every=128"]),
    "hogwild": ("a3c", 300, ["--set", "max_restarts=0", "checkpoint_every=50"]),
    "ray": ("ppo", 150, ["--runner", "ray", "--set", "n_envs=2", "n_steps=32", "batch_size=64",
                         "checkpoint_every=128"]),
}


def _contrl(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "contrl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


def _one_line_fault(p, *words) -> str:
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("contrl: warning:")]
    assert len(lines) == 1 and lines[0].startswith("contrl: error:"), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _finite_checkpoint(path: Path) -> dict:
    st = torch.load(path, weights_only=True)
    assert all(torch.isfinite(t).all() for t in st["model"].values()), path
    return st


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("fault,words", [
    ("nan_obs", ["returned a non-finite observation", "env "]),
    ("raise", ["raised RuntimeError in step(): simulator exploded"]),
])
def test_env_fault_stops_with_one_line_keeps_good_checkpoints_and_resumes(tmp_path, runner, fault, words):
    algo, after, extra = RUNNERS[runner]
    run = tmp_path / "run"
    p = _contrl("train", algo, "--env", ENV, "--env-kwargs", f"fault={fault}", f"after={after}", "--steps", 20_000,
                "--out", run, "--quiet", "--no-tensorboard", *extra, *SMALL)
    line = _one_line_fault(p, *words, f"'{ENV}'", "at step", f"details: {run}/messages.log",
                           f"resume with contrl train --resume {run}")
    assert "Traceback" not in p.stderr
    at = int(line.split("at step ")[1].split(":")[0].replace(",", ""))
    log = (run / "messages.log").read_text()
    assert "Traceback" in log and ("simulator exploded" in log or "non-finite" in log)
    latest = _finite_checkpoint(run / "checkpoints" / "latest.pt")
    _finite_checkpoint(run / "checkpoints" / "best.pt")
    saved = json.loads(latest["train_state"]["meta"])["step"]
    # (Hogwild: the other worker may go on for a moment, and a checkpoint of its finite updates be saved)
    assert 0 < saved <= at + (100 if runner == "hogwild" else 0)
    if fault == "raise":  # the env instances of a resumed run are new: it goes on from the checkpoint
        res = _contrl("train", "--resume", run, "--steps", saved + 256, "--quiet", "--no-tensorboard")
        assert res.returncode == 0, res.stderr
        assert json.loads((run / "summary.json").read_text())["steps"] >= saved + 256


def test_wrong_observation_shape_is_one_line(tmp_path):
    p = _contrl("train", "ppo", "--env", ENV, "--env-kwargs", "fault=shape", "after=40", "--steps", 5000,
                "--out", tmp_path / "run", "--quiet", "--no-tensorboard", "--set", "vec=inprocess", "n_envs=2",
                "n_steps=32", "batch_size=64", *SMALL)
    _one_line_fault(p, "returned an observation of shape (5,)", "declares (3,)")


def test_observations_outside_the_bounds_are_warned_once(tmp_path):
    p = _contrl("train", "ppo", "--env", ENV, "--env-kwargs", "fault=bounds", "after=0", "--steps", 256, "--out",
                tmp_path / "run", "--quiet", "--no-tensorboard", "--set", "vec=inprocess", "n_envs=2", "n_steps=64",
                "batch_size=64", *SMALL)
    assert p.returncode == 0, p.stderr
    warned = [ln for ln in p.stderr.splitlines() if "outside its observation_space bounds" in ln]
    assert len(warned) == 1 and warned[0].startswith("contrl: warning: environment 'tests.faulty:Faulty'"), p.stderr


@pytest.mark.parametrize("vec", ["inprocess", "subprocess"])
def test_mujoco_warnings_stay_off_the_terminal_and_out_of_the_working_directory(tmp_path, vec):
    """MuJoCo >= 4 prints a deprecation line for HalfCheetah's model on every env made (to stderr) and
    appends it to MUJOCO_LOG.TXT in the working directory: neither may reach the user."""
    p = _contrl("train", "ppo", "--env", "HalfCheetah-v5", "--steps", 128, "--out", tmp_path / "run", "--quiet",
                "--no-tensorboard", "--set", f"vec={vec}", "n_envs=2", "n_steps=64", "batch_size=64", *SMALL,
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "settotalmass" not in p.stderr and "WARNING" not in p.stderr, p.stderr
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_mujoco_runtime_warnings_are_one_line_each():
    """A MuJoCo warning that says something about the run (here an unstable simulation) is kept, as one
    ``contrl: warning:`` line."""
    code = ("from contrl.errors import one_line_warnings; one_line_warnings()\n"
            "from contrl.envs.make import make_env\n"
            "e = make_env('Hopper-v5'); e.reset(seed=0); e.unwrapped.data.qvel[:] = 1e12\n"
            "for _ in range(3): e.step(e.action_space.sample())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("contrl: warning: MuJoCo: Nan, Inf or huge value"), p.stderr


def test_evaluation_env_raising_is_one_line(tmp_path):
    p = _contrl("train", "ppo", "--env", ENV, "--env-kwargs", "fault=raise", "after=5", "eval_only=true", "--steps",
                2000, "--out", tmp_path / "run", "--quiet", "--no-tensorboard", "--set", "vec=inprocess", "n_envs=2",
                "n_steps=32", "batch_size=64", *SMALL)
    _one_line_fault(p, "(evaluation)", "the periodic evaluation", "simulator exploded")


def test_eval_and_play_of_a_raising_env_are_one_line(tmp_path):
    run = tmp_path / "run"
    train("ppo", ENV, steps=256, out=run, quiet=True, tensorboard=False,
          overrides={"vec": "inprocess", "n_envs": 2, "n_steps": 64, "batch_size": 64, "eval_episodes": 1,
                     "final_eval_episodes": 0})
    for cmd in (["eval", run, "--env-kwargs", "fault=raise", "after=3"], ["play", run, "--video", tmp_path / "v.gif"]):
        if cmd[0] == "play":  # play uses the run's own env kwargs: point it at a raising env
            cfg = json.loads((run / "config.json").read_text())
            ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
            ckpt["config"] = json.dumps({**cfg, "env_kwargs": {"fault": "raise", "after": 3}})
            torch.save(ckpt, run / "checkpoints" / "best.pt")
        p = _contrl(*cmd)
        _one_line_fault(p, "raised RuntimeError", f"details: {run}/messages.log")


def test_skip_update_drops_a_glitch_and_goes_on(tmp_path):
    """nan_policy=skip_update: a NaN observation once (a glitch) drops that rollout's update,
    counted in progress.csv and the summary; the run completes with finite weights."""
    agent = train("ppo", ENV, steps=2048, out=tmp_path / "run", quiet=True, tensorboard=False,
                  env_kwargs={"fault": "nan_obs", "after": 150, "once": True},
                  overrides={"vec": "inprocess", "n_envs": 4, "n_steps": 32, "batch_size": 64, "eval_episodes": 1,
                             "final_eval_episodes": 1, "nan_policy": "skip_update"})
    assert agent.summary["skipped_updates"] == 1 and agent.summary["steps"] == 2048
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    rows = (tmp_path / "run" / "progress.csv").read_text().splitlines()
    col = rows[0].split(",").index("skipped_updates")
    assert rows[-1].split(",")[col] == "1"
    with pytest.raises(NonFinite, match="non-finite observation"):  # the same glitch under the default policy
        train("ppo", ENV, steps=2048, out=tmp_path / "stop", quiet=True, tensorboard=False,
              env_kwargs={"fault": "nan_obs", "after": 150, "once": True},
              overrides={"vec": "inprocess", "n_envs": 4, "n_steps": 32, "batch_size": 64, "eval_episodes": 1})


def test_skip_update_stops_after_max_skipped_in_a_row(tmp_path):
    with pytest.raises(Fault, match="3 updates in a row were skipped"):
        train("a2c", ENV, steps=20_000, out=tmp_path / "run", quiet=True, tensorboard=False,
              env_kwargs={"fault": "nan_reward", "after": 100},
              overrides={"vec": "inprocess", "n_envs": 2, "eval_episodes": 1, "nan_policy": "skip_update",
                         "max_skipped": 3})


def _rollout(reward=0.0):
    model = ActorCritic(3, gym.spaces.Discrete(2), NetConfig())
    ro = Rollout(4, 2, 3, ())
    ro.obs.normal_()
    ro.rewards.fill_(reward)
    return model, ro


def test_a_non_finite_loss_never_steps_the_weights():
    """The rule checks the loss and the gradient norm before stepping: NaN targets (here a NaN
    reward that reached the rule) raise under nan_policy stop, are dropped under skip_update;
    either way the weights are untouched."""
    for policy in ("stop", "skip_update"):
        torch.manual_seed(0)
        model, ro = _rollout(float("nan"))
        rule = A2C(model, A2CConfig(lr=1e-2))
        rule.nan_policy = policy
        before = [p.detach().clone() for p in model.parameters()]
        if policy == "stop":
            with pytest.raises(NonFinite, match="non-finite loss in update 1"):
                rule.update(ro)
        else:
            assert rule.update(ro)["skipped_updates"] == 1
        assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert rule.optimizer.steps == 0


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path, monkeypatch):
    """The last line of defence: whatever made the weights non-finite, latest.pt and best.pt keep
    the last good ones."""
    from contrl.algos.ppo import PPO

    calls = {"n": 0}
    real = PPO.update

    def poisoned(self, rollout, generator):
        out = real(self, rollout, generator)
        calls["n"] += 1
        if calls["n"] == 6:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(PPO, "update", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFinite, match="nothing was saved over the last good checkpoint"):
        train("ppo", "CartPole-v1", steps=4096, out=run, quiet=True, tensorboard=False,
              overrides={"n_envs": 2, "n_steps": 64, "batch_size": 64, "checkpoint_every": 128, "eval_episodes": 1})
    st = _finite_checkpoint(run / "checkpoints" / "latest.pt")
    assert json.loads(st["train_state"]["meta"])["step"] == 5 * 128
    _finite_checkpoint(run / "checkpoints" / "best.pt")


def test_a_full_disk_keeps_the_last_checkpoint_whole(tmp_path, monkeypatch):
    """ENOSPC while writing a checkpoint: one line naming the file and the cause; the previous
    latest.pt is untouched and loads; no temporary file is left."""
    import contrl.record.checkpoint as checkpoint

    real, calls = checkpoint.torch.save, {"n": 0}

    def save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] >= 4:
            with open(f, "wb") as fh:
                fh.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(Fault) as e:
        train("ppo", "CartPole-v1", steps=4096, out=run, quiet=True, tensorboard=False,
              overrides={"n_envs": 2, "n_steps": 64, "batch_size": 64, "checkpoint_every": 128, "eval_every": 10**6,
                         "eval_episodes": 1})
    assert "No space left on device" in str(e.value) and "latest.pt" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(checkpoint.torch, "save", real)
    assert contrl.load(run, prefer="latest").evaluate(episodes=1)["episodes"] == 1
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert "No space left on device" in (run / "messages.log").read_text()


def test_a_full_disk_while_logging_is_one_line(tmp_path, monkeypatch):
    """ENOSPC while writing progress.csv: one line naming the cause, the checkpoints as they were."""
    from contrl.record.logger import Logger

    real, calls = Logger.progress, {"n": 0}

    def progress(self, row):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(Logger, "progress", progress)
    run = tmp_path / "run"
    with pytest.raises(Fault, match="No space left on device") as e:
        train("ppo", "CartPole-v1", steps=4096, out=run, quiet=True, tensorboard=False,
              overrides={"n_envs": 2, "n_steps": 64, "batch_size": 64, "log_every": 128, "checkpoint_every": 128,
                         "eval_every": 10**6, "eval_episodes": 1})
    assert "\n" not in str(e.value) and "resume with contrl train --resume" in str(e.value)
    assert json.loads(torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["train_state"]["meta"])[
        "step"] == 4 * 128


def test_out_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    p = _contrl("train", "ppo", "--env", "CartPole-v1", "--out", tmp_path / "taken", "--steps", 1000)
    assert p.returncode == 2 and "is a file, not a folder" in p.stderr and "Traceback" not in p.stderr


def test_unbounded_box_actions_train(tmp_path):
    """Box(-inf, inf) actions (common in custom envs): the Gaussian's actions go to the env
    unclipped where a bound is infinite, and the task is learned."""
    agent = train("ppo", ENV, steps=8192, seed=0, out=tmp_path / "run", quiet=True, tensorboard=False,
                  env_kwargs={"box": True},
                  overrides={"vec": "inprocess", "n_envs": 4, "n_steps": 64, "batch_size": 64, "lr": 1e-3,
                             "eval_episodes": 5, "final_eval_episodes": 10})
    assert agent.summary["final_eval"]["mean"] >= 18, agent.summary["final_eval"]  # 20 is perfect, chance 10
    assert np.isinf(agent.action_space.high).all()


def test_input_errors_stay_exit_2():
    assert ContrlError.exit_code == 2 and Fault.exit_code == 1 and issubclass(Fault, ContrlError)


def test_resume_changes_only_the_budget_and_where_ray_runs(tmp_path):
    """--resume continues a run as configured: another setting is refused; --ray-address (where
    the actors live, not what the run computes) only on the Ray runner."""
    run = tmp_path / "run"
    train("ppo", "CartPole-v1", steps=256, seed=0, out=run, quiet=True, tensorboard=False,
          overrides={"n_envs": 2, "n_steps": 32, "batch_size": 64, "eval_every": 256, "eval_episodes": 1,
                     "final_eval_episodes": 1})
    with pytest.raises(ContrlError, match=r"only --steps \(and, on the Ray runner, --ray-address\) may change"):
        train(resume=run, overrides={"lr": 1e-3}, quiet=True)
    with pytest.raises(ContrlError, match=r"only --steps .* may change"):
        train(resume=run, overrides={"ray_address": "auto", "lr": 1e-3}, quiet=True)
    with pytest.raises(ContrlError, match=r"--ray-address applies to the Ray runner; '.*run' runs on the sync runner"):
        train(resume=run, overrides={"ray_address": "auto"}, quiet=True)
