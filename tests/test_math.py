"""Analytic tests: truncation bootstrapping end to end, distributions, normalisation (GAE by hand:
test_storage.py)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from contrl.envs.normalize import RunningMeanStd
from contrl.nets.distributions import Categorical, DiagGaussian


def _value_of_constant_env(terminate: bool, out) -> float:
    from contrl.api import train

    agent = train("ppo", "tests.envs:ConstantEnv", steps=12_000, seed=0, quiet=True, tensorboard=False,
                  env_kwargs={"limit": 5, "terminate": terminate}, out=out,
                  overrides={"n_envs": 4, "n_steps": 50, "batch_size": 100, "n_epochs": 10, "gamma": 0.9,
                             "lr": 3e-3, "normalize_advantage": False, "eval_episodes": 1,
                             "final_eval_episodes": 0})
    with torch.no_grad():
        return agent.model.value(torch.tensor([[0.5, -0.5]])).item()


def test_truncation_bootstraps_to_infinite_horizon_value(tmp_path):
    """Endless task under a 5-step time limit: V(s0) -> 1/(1-gamma) = 10, not the truncated
    5-step return (~2.6) that treating the time limit as termination would learn."""
    v_trunc = _value_of_constant_env(False, tmp_path / "trunc")
    v_term = _value_of_constant_env(True, tmp_path / "term")
    assert v_trunc == pytest.approx(10.0, rel=0.1)
    expected_term = np.mean([(1 - 0.9 ** (5 - t)) / 0.1 for t in range(5)])  # 2.629
    assert v_term == pytest.approx(expected_term, rel=0.1)


def test_categorical_matches_torch_distributions():
    logits = torch.randn(5, 4)
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    a = torch.tensor([0, 1, 2, 3, 1])
    assert torch.allclose(ours.log_prob(a), ref.log_prob(a), atol=1e-6)
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-6)
    other = torch.randn(5, 4)
    assert torch.allclose(ours.kl(Categorical(other)),
                          torch.distributions.kl_divergence(ref, torch.distributions.Categorical(logits=other)), atol=1e-5)


def test_categorical_sampling_frequencies():
    probs = torch.tensor([0.1, 0.6, 0.3])
    d = Categorical(probs.log().expand(200_000, 3))
    counts = torch.bincount(d.sample(torch.Generator().manual_seed(0)), minlength=3).float() / 200_000
    assert torch.allclose(counts, probs, atol=0.01)


def test_gaussian_matches_torch_distributions():
    mean, log_std = torch.randn(6, 3), torch.randn(3) * 0.3
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    x = torch.randn(6, 3)
    assert torch.allclose(ours.log_prob(x), ref.log_prob(x), atol=1e-5)
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-5)
    s = DiagGaussian(torch.zeros(100_000, 1), torch.tensor([math.log(2.0)])).sample(torch.Generator().manual_seed(1))
    assert s.std().item() == pytest.approx(2.0, rel=0.02)


def test_gaussian_actions_clipped_to_bounds_but_logprob_of_unclipped_sample():
    from contrl.agent import Agent
    from contrl.config import NetConfig, build_config
    from contrl.nets.actor_critic import ActorCritic

    space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    obs_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    model = ActorCritic(3, space, NetConfig(log_std_init=2.0))  # std ~7: most samples leave [-2, 2]
    agent = Agent(build_config("ppo", "Pendulum-v1"), model, obs_space, space)
    acts = agent.act(np.zeros((1000, 3), np.float32), deterministic=False, generator=torch.Generator().manual_seed(0))
    assert acts.min() >= -2.0 and acts.max() <= 2.0
    assert (np.abs(acts) == 2.0).mean() > 0.5  # many were clipped


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd((2,), epsilon=0.0)
    data = np.random.default_rng(0).normal(3.0, 2.0, (1000, 2))
    rms.count = 0.0
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    assert np.allclose(rms.mean, data.mean(0)) and np.allclose(rms.var, data.var(0))


def test_running_mean_std_one_row_at_a_time():
    """One env's rows one at a time (the fast path of a single row, float32 rows as the envs give
    them): the same statistics as the batch, and equal to float64 rounding to merging numpy's own
    mean and variance of each row."""
    data = np.random.default_rng(1).normal(-2.0, 5.0, (500, 3)).astype(np.float32).astype(np.float64)
    rms, ref = RunningMeanStd((3,)), RunningMeanStd((3,))
    for row in data:
        rms.update(row[None].astype(np.float32))
        ref.merge(row[None].mean(axis=0), row[None].var(axis=0), 1)
    assert rms.mean.dtype == rms.var.dtype == np.float64 and rms.count == ref.count
    assert np.allclose(rms.mean, ref.mean, rtol=1e-13, atol=0) and np.allclose(rms.var, ref.var, rtol=1e-13, atol=0)
    assert not np.allclose(rms.var, ref.var * (1 + 1e-9), rtol=1e-12, atol=0)  # the tolerance can fail
    assert np.allclose(rms.mean, data.mean(0)) and np.allclose(rms.var, data.var(0), rtol=1e-3)
    scalar = RunningMeanStd(())
    for x in data[:50, 0]:
        scalar.update(np.array([x]))
    assert np.isclose(scalar.mean, data[:50, 0].mean()) and np.isclose(scalar.var, data[:50, 0].var(), rtol=1e-3)
    assert np.shape(scalar.var) == ()


def test_clip_to_float32_is_clip_then_astype():
    """The normalisers' clip (two ufuncs instead of np.clip + astype): the same float32 numbers,
    NaN and infinities included, for float64 and float32 inputs."""
    from contrl.envs.normalize import clip_to_float32

    x = np.random.default_rng(2).normal(0.0, 8.0, (7, 5))
    x[0, :3] = [np.nan, np.inf, -np.inf]
    for a in (x, x.astype(np.float32)):
        out = clip_to_float32(a, 5.0)
        assert out.dtype == np.float32 and out.shape == a.shape
        np.testing.assert_array_equal(out, np.clip(a, -5.0, 5.0).astype(np.float32))
