"""The Ray runner (--runner ray) on a local Ray limited to 2 CPUs: learning, an actor killed
mid-run, exact resume, a Ray-trained checkpoint loaded without Ray, and its errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

import contrl
from contrl.api import train
from contrl.errors import ContrlError
from contrl.errors import Interrupted

ROOT = Path(__file__).resolve().parents[1]
FINAL_ONLY = {"eval_every": 10**9}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray with 2 CPUs for the module; the runner uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _ray_train(algo, steps, seed, out, **overrides):
    return train(algo, "CartPole-v1", steps=steps, seed=seed, out=out, quiet=True, tensorboard=False,
                 overrides={"runner": "ray", **overrides})


def _actor(j):
    """The handle of actor j of the (one) run going on."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("contrl-") and a["name"].endswith(f"-{j}")]
    assert len(names) == 1, names
    return ray.get_actor(names[0])


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """The ppo CartPole preset on 2 actors x 4 envs (the preset's 8 envs), 60k steps."""
    out = tmp_path_factory.mktemp("ray") / "ppo"
    agent = _ray_train("ppo", 60_000, 1, out, workers=2, n_envs=4, **FINAL_ONLY)
    return out, agent


def test_ppo_on_ray_cartpole_reaches_475(ppo_run):
    """Measured: 500 (seed 1)."""
    out, agent = ppo_run
    s = agent.summary
    assert s["final_eval"]["mean"] >= 475, s
    # actor j steps the env seeds the synchronous runner gives envs 4j..4j+3
    assert s["ray_actors"] == 2 and s["env_seeds"] == list(range(1, 9)) and s["ray_actor_restarts"] == [0, 0]
    # where each actor ran: this module's Ray (tests/conftest.py keeps every test's Ray on loopback)
    assert [node["ip"] for node in s["ray_actor_nodes"]] == ["127.0.0.1"] * 2, s["ray_actor_nodes"]
    assert all(len(node["node_id"]) > 12 for node in s["ray_actor_nodes"])
    assert json.loads((out / "config.json").read_text())["runner"] == "ray"


def test_ray_checkpoint_evaluates_without_ray(ppo_run):
    """A Ray-trained checkpoint loads and evaluates in a Python where Ray cannot be imported."""
    out, _ = ppo_run
    code = ("import sys; sys.modules['ray'] = None\n"
            "import contrl\n"
            f"agent = contrl.load({str(out)!r})\n"
            "print(agent.evaluate(episodes=5, seed=3)['mean'])\n"
            "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip()) >= 475


def test_a2c_on_ray_reaches_475_with_an_actor_killed(tmp_path):
    """The a2c CartPole preset on 2 actors x 4 envs. At the first periodic evaluation a thread
    ray.kill()s actor 0 (Ray restarts it) while training goes on: its rollout in flight is
    discarded (or, killed between two rollouts, it is found restarted), the log says so, and
    training finishes and learns. Measured: 500 (seed 1)."""
    killed = []

    def hook(step, mean):
        if not killed:
            killed.append(step)
            victim = _actor(0)
            threading.Timer(0.2, lambda: ray.kill(victim, no_restart=False)).start()

    agent = train("a2c", "CartPole-v1", steps=150_000, seed=1, out=tmp_path / "run", quiet=True, tensorboard=False,
                  overrides={"runner": "ray", "workers": 2, "n_envs": 4, "eval_every": 50_000}, eval_hook=hook)
    s = agent.summary
    assert killed == [50_000] and s["steps"] >= 150_000
    assert s["ray_actor_restarts"] == [1, 0], s
    log = (tmp_path / "run" / "messages.log").read_text()
    assert "ray actor 0 died" in log and "restart 1 of at most 3" in log, log
    assert s["final_eval"]["mean"] >= 475, s


def test_ray_actor_killed_between_rollouts_is_counted_once(tmp_path):
    """Killed while idle (between two iterations), the actor is restarted by Ray without any
    request failing, or the next request fails while it restarts: either way one restart is
    counted and logged, and the run finishes."""
    def hook(step, mean):
        if step == 2048:
            ray.kill(_actor(1), no_restart=False)

    agent = train("ppo", "CartPole-v1", steps=8192, seed=0, out=tmp_path / "run2", quiet=True, tensorboard=False,
                  overrides={"runner": "ray", "workers": 2, "n_envs": 4, "n_steps": 128, "batch_size": 256,
                             "n_epochs": 1, "eval_every": 2048, "eval_episodes": 1, "final_eval_episodes": 1},
                  eval_hook=hook)
    s = agent.summary
    assert s["ray_actor_restarts"] == [0, 1] and s["steps"] >= 8192, s
    assert (tmp_path / "run2" / "messages.log").read_text().count("ray actor 1 died") == 1


def test_a3c_on_ray_learns(tmp_path):
    """A3C's asynchronous pattern on Ray: 2 gradient workers x 4 envs; the learner applies each
    gradient as it arrives and sends that worker fresh weights. As for the Hogwild runner, the
    claim is on the best checkpoint, re-evaluated on 20 unseen episodes (an untrained policy
    scores ~10-20). Measured, best checkpoint re-evaluated: 500, 482.7 and 500 for seeds 0-2."""
    agent = _ray_train("a3c", 100_000, 0, tmp_path / "run", workers=2, n_envs=4)
    assert agent.summary["ray_actors"] == 2 and agent.summary["steps"] >= 100_000
    ev = contrl.load(tmp_path / "run").evaluate(episodes=20, seed=777)
    assert ev["mean"] >= 150, (ev, agent.summary)


@pytest.mark.slow  # ~1 min; by default ACER's asynchronous pattern learns on the Hogwild runner (test_learning.py)
# and A3C's on Ray (above), the same actor and learner code
def test_async_acer_on_ray_learns(tmp_path):
    """ACER's asynchronous pattern on Ray (ray_pattern=async): 2 gradient actors x 4 envs, each
    with its own replay memory, answering with on-policy or replayed gradients; the average
    network follows on the learner. The acer CartPole preset's values, 60k steps, as the
    Hogwild test; the claim is on the best checkpoint. Measured, best checkpoint re-evaluated:
    493.2, 473.6 and 497.3 for seeds 0-2 (final evaluations 399.4, 457.2 and 431.8)."""
    agent = _ray_train("acer", 60_000, 0, tmp_path / "run", workers=2, n_envs=4, ray_pattern="async")
    s = agent.summary
    assert s["ray_actors"] == 2 and s["replay_buffer"]["capacity_transitions"] == 100_000, s
    ev = contrl.load(tmp_path / "run").evaluate(episodes=20, seed=777)
    assert ev["mean"] >= 150, (ev, s)


def test_gradient_answers_match_a_local_worker_and_outlive_the_next_request():
    """What an asynchronous-pattern actor answers (``[segments, params]`` gradients, all with the
    request's weights) is exactly what a local Worker with the same seeds and weights computes,
    row for row, and an answer already received does not change when the actor answers again."""
    import numpy as np

    from contrl.config import build_config
    from contrl.runners.collect import Worker
    from contrl.runners.ray_runner import EnvActor, from_flat, to_flat
    from contrl.threads import set_threads

    set_threads(1)  # as the actor: another thread count sums the matmuls in another order
    cfg = build_config("a3c", "CartPole-v1", overrides={"runner": "ray", "workers": 1, "n_envs": 2,
                                                        "norm_obs": False, "norm_reward": False})
    local = Worker(cfg, [5, 6], 11, None, gradients=True, first=0)
    weights = to_flat(local.rule.weights())
    actor = ray.remote(EnvActor).remote(cfg.to_json(), [5, 6], 11, 1, True, 0)
    first = ray.get(actor.gradients.remote(weights, None, 2))
    kept = first["grads"].copy()
    second = ray.get(actor.gradients.remote(weights, None, 2))
    ray.kill(actor)
    expected = []
    for _ in range(4):
        from_flat(weights, local.rule.weights())
        local.gradients()
        expected.append(to_flat(local.grads()))
    assert first["grads"].shape == (2, weights.size) and np.array_equal(first["grads"], kept)
    assert np.array_equal(np.concatenate([first["grads"], second["grads"]]), np.stack(expected))
    assert not np.array_equal(expected[0], expected[1]) and np.abs(expected[0]).sum() > 0


def _episodes(run):
    """episodes.csv without its wall-clock column."""
    rows = (Path(run) / "episodes.csv").read_text().splitlines()
    return [r.split(",")[:1] + r.split(",")[2:] for r in rows]


@pytest.mark.parametrize("algo", ["a2c", "a3c"])
def test_ray_segments_bring_what_one_segment_requests_do(tmp_path, algo):
    """ray_segments=3: every answer brings 3 segments (rollouts, or gradients), all computed with
    the request's weights. With the weights held still (lr 1e-30) and no observation
    normalisation, the experience is that of one-segment requests episode for episode, and the
    budget is kept: 10,000 steps are 250 a2c segments of 8 envs x 5 (the last request brings 1).
    For a2c each update's statistics are the same too (progress rows every 1,200 steps, a whole
    number of requests either way), so each update sees its own segment's rollout."""
    over = {"workers": 2, "n_envs": 4, "lr": 1e-30, "norm_obs": False, "eval_every": 6000, "log_every": 1200,
            "eval_episodes": 1, "final_eval_episodes": 1}
    one = _ray_train(algo, 10_000, 0, tmp_path / "one", **over)
    three = _ray_train(algo, 10_000, 0, tmp_path / "three", ray_segments=3, **over)
    if algo == "a2c":  # one actor's episodes vs the other's arrive in the same order
        assert _episodes(tmp_path / "one") == _episodes(tmp_path / "three")
        assert one.summary["steps"] == three.summary["steps"] == 10_000
        rows = [list(csv.DictReader(open(tmp_path / run / "progress.csv"))) for run in ("one", "three")]
        keys = ("step", "policy_loss", "value_loss", "entropy", "explained_variance")
        assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
        assert len(rows[0]) >= 8
    else:  # which actor answers first is a race: compare each env's episodes
        for env in range(8):
            a, b = ([r[2:] for r in _episodes(tmp_path / run)[1:] if r[1] == str(env)] for run in ("one", "three"))
            n = min(len(a), len(b))
            assert n > 10 and a[:n] == b[:n], env
        assert three.summary["steps"] >= 10_000


def test_ray_ctrl_c_then_resume_equals_uninterrupted(tmp_path):
    """Ctrl-C (SIGINT) mid-run saves a checkpoint holding every actor's envs, LSTM state and
    generator; resuming ends with exactly the parameters of the uninterrupted run. With
    observation and reward normalisation, which the learner merges and applies."""
    over = {"workers": 2, "n_envs": 2, "n_steps": 64, "batch_size": 128, "n_epochs": 2, "net.seq_len": 16,
            "norm_obs": True, "norm_reward": True, "eval_every": 1024, "eval_episodes": 1, "final_eval_episodes": 1}
    kw = dict(steps=4096, seed=3, net="lstm", quiet=True, tensorboard=False)
    full = train("ppo", "CartPole-v1", out=tmp_path / "full", overrides={"runner": "ray", **over}, **kw)

    def interrupt(step, mean):
        if step == 2048:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the runner: stop after this update
            time.sleep(0.1)

    with pytest.raises(Interrupted):
        train("ppo", "CartPole-v1", out=tmp_path / "part", overrides={"runner": "ray", **over}, eval_hook=interrupt,
              **kw)
    meta = json.loads(torch.load(tmp_path / "part" / "checkpoints" / "latest.pt", weights_only=True)
                      ["train_state"]["meta"])
    assert meta["step"] == 2048
    resumed = train(resume=tmp_path / "part", quiet=True, tensorboard=False)
    a = torch.cat([p.flatten() for p in full.model.parameters()])
    b = torch.cat([p.flatten() for p in resumed.model.parameters()])
    assert torch.equal(a, b)
    assert resumed.obs_norm.rms.count == full.obs_norm.rms.count


def test_a_runs_own_local_ray_binds_loopback_only(tmp_path):
    """Without --ray-address a run starts its own Ray, on 127.0.0.1 only (Ray on Linux would
    otherwise bind and advertise the host's outward address), also when nothing in the
    environment asks for it; the run's summary and log say where each actor ran."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")}
    code = ("import json, os, sys\n"
            "from contrl.api import train\n"
            "from ray._private import services\n"
            "agent = train('ppo', 'CartPole-v1', steps=2048, out=sys.argv[1], quiet=True, tensorboard=False,\n"
            "              overrides={'runner': 'ray', 'workers': 1, 'n_envs': 8, 'eval_every': 10**9,\n"
            "                         'final_eval_episodes': 1})\n"
            "print(json.dumps(agent.summary['ray_actor_nodes']))\n"
            "assert 'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER' not in os.environ  # undone when the run's Ray stops\n"
            "assert 'RAY_AUTH_MODE' not in os.environ  # what its ray.init set (token authentication) too\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    nodes = json.loads(res.stdout.strip().splitlines()[-1])
    assert [node["ip"] for node in nodes] == ["127.0.0.1"], nodes
    assert f"ray actor 0 runs on node {nodes[0]['node_id'][:12]} (127.0.0.1)" in (
        tmp_path / "run" / "messages.log").read_text()


def test_ray_errors(tmp_path, monkeypatch):
    with pytest.raises(ContrlError, match=r"has 2 CPUs and the run asks for 3 actors x ray_cpus 1 = 3"):
        _ray_train("ppo", 4096, 0, tmp_path / "a", workers=3, n_envs=4)
    with pytest.raises(ContrlError, match=r"ray_cpus must be > 0"):
        _ray_train("ppo", 4096, 0, tmp_path / "b", ray_cpus=0)
    with pytest.raises(ContrlError, match=r"ray_pattern for ppo must be sync, got 'async'"):
        _ray_train("ppo", 4096, 0, tmp_path / "f", ray_pattern="async")
    with pytest.raises(ContrlError, match=r"ray_segments must be >= 1, got 0"):
        _ray_train("a2c", 4096, 0, tmp_path / "g", ray_segments=0)
    with pytest.raises(ContrlError, match=r"ray_address must be auto or HOST:PORT"):
        _ray_train("ppo", 4096, 0, tmp_path / "c", ray_address="nowhere")
    with pytest.raises(ContrlError, match=r"'ray_address' applies to the Ray runner; add --runner ray"):
        train("ppo", "CartPole-v1", steps=4096, out=tmp_path / "d", quiet=True, overrides={"ray_address": "auto"})
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ContrlError, match=r'--runner ray needs Ray: pip install "contrl\[ray\]"'):
        _ray_train("ppo", 4096, 0, tmp_path / "e")


def test_a_ray_error_the_runner_does_not_name_is_one_line_naming_ray(tmp_path, monkeypatch):
    """A Ray exception the runner has no message of its own for (here the RaySystemError Ray
    raised when it cancelled a run's actors) stops the run in one line that names Ray and where
    to look, not as "an error of contrl itself"."""
    from contrl.errors import Fault
    from contrl.runners.ray_runner import RayActors

    def cancelled(self, method, args):
        raise ray.exceptions.RaySystemError("Actor creation cancelled.")

    monkeypatch.setattr(RayActors, "call_all", cancelled)
    with pytest.raises(Fault) as e:
        _ray_train("ppo", 4096, 0, tmp_path / "run", workers=1, n_envs=8)
    assert str(e.value).startswith("after step 0: Ray failed: RaySystemError (System error: Actor creation "
                                   "cancelled.); check the cluster (`ray status`) and Ray's logs"), str(e.value)
    assert "error of contrl itself" not in str(e.value)


def test_async_resume_restores_each_actors_reward_scaler(tmp_path):
    """The asynchronous pattern with norm_reward: each actor's reward statistics travel with its
    answers, are saved, and the actors of a resumed run start from them."""
    over = {"norm_reward": True, "workers": 2, "n_envs": 1, "eval_episodes": 1, "final_eval_episodes": 0}
    _ray_train("a3c", 2000, 0, tmp_path / "run", **over)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    before = json.loads(torch.load(ckpt, weights_only=True)["train_state"]["reward_stats"])
    assert all(s["count"] > 300 for s in before), before
    agent = train(resume=tmp_path / "run", steps=4000, quiet=True, tensorboard=False)
    after = json.loads(torch.load(ckpt, weights_only=True)["train_state"]["reward_stats"])
    assert all(a["count"] > b["count"] + 300 for a, b in zip(after, before)), (before, after)
    assert "reward scaler" in agent.summary["resumed"]["restored"]
