"""Recurrent (LSTM) networks: state handling by hand, acting step by step == training over
sequences, sequence batches, masked-velocity envs, and the memory task."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import contrl
from contrl.agent import Agent, build_model
from contrl.api import train
from contrl.config import build_config
from contrl.envs.vec import VecEnv
from contrl.runners.collect import collect
from contrl.storage.rollout import Rollout

TOL = dict(atol=2e-6, rtol=1e-5)  # float32 rounding: matmuls of other batch shapes sum in other orders


def _setup(env, env_kwargs, n_envs, T, net_overrides, seed=0):
    overrides = {f"net.{k}": v for k, v in net_overrides.items()}
    cfg = build_config("ppo", env, env_kwargs=env_kwargs, net="lstm", seed=seed,
                       overrides={"n_envs": n_envs, "n_steps": T, "batch_size": n_envs * T // 4, **overrides})
    torch.manual_seed(seed)
    venv = VecEnv(cfg.env, cfg.env_kwargs, [seed + i for i in range(n_envs)])
    model = build_model(cfg, venv.observation_space, venv.action_space)
    agent = Agent(cfg, model, venv.observation_space, venv.action_space)
    act_shape = () if agent.discrete else tuple(venv.action_space.shape)
    rollout = Rollout(T, n_envs, venv.obs_dim, act_shape, model.state_size, cfg.seq_len)
    return cfg, venv, model, agent, rollout


@pytest.mark.parametrize("env,env_kwargs,net", [
    ("contrl/CartPoleNoVel-v1", {}, {"seq_len": 8}),
    ("contrl/CartPoleNoVel-v1", {}, {"critic_lstm": True, "post_hidden": [16], "lstm_layers": 2}),
    ("Pendulum-v1", {"max_episode_steps": 23}, {"hidden": [], "critic_lstm": True, "seq_len": 16}),
])
def test_state_by_hand_and_acting_equals_training_over_sequences(env, env_kwargs, net):
    N, T = 3, 64
    cfg, venv, model, agent, rollout = _setup(env, env_kwargs, N, T, net)
    gen = torch.Generator().manual_seed(0)
    state = model.initial_state(N)
    finals = {}  # (t, env) -> final observation of a truncated episode

    def on_step(t, res):
        for i in np.flatnonzero(res.truncated & ~res.terminated):
            finals[(t, int(i))] = res.final_obs[i]

    with torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():  # away from the near-zero init, so states matter
            p.add_(0.3 * torch.randn_like(p))
    collect(agent, venv, rollout, gen, None, on_step, state)  # a first rollout: non-zero carried state
    state_at_start = state.clone()
    finals.clear()
    collect(agent, venv, rollout, gen, None, on_step, state)
    venv.close()
    assert rollout.dones.sum() >= 2

    # the state by hand: replay the rollout one step at a time (torch's step from each stored
    # state; the acting loop's is numpy's, equal to float32 rounding), zeroing after every done
    h = state_at_start
    with torch.no_grad():
        for t in range(T):
            torch.testing.assert_close(rollout.states[t], h, **TOL)  # the stored state is the one the acting loop had
            for i in range(N):
                if t > 0 and rollout.dones[t - 1, i]:
                    assert rollout.states[t, i].abs().sum() == 0  # after a done: zero
            pi_out, v, h = model.step(rollout.obs[t], rollout.states[t])
            h = h.masked_fill(rollout.dones[t].bool().unsqueeze(1), 0.0)
        torch.testing.assert_close(state, h, **TOL)  # the carried state is what the next rollout starts from
    assert rollout.states[0].abs().sum() > 0

    # training over sequences gives the log-probs and values acting stored
    rollout.finish(0.99, 0.95)
    seen = 0
    with torch.no_grad():
        for mb in rollout.minibatches(cfg.ppo.batch_size, gen):
            assert mb.obs.shape[0] <= cfg.seq_len
            pi_out, values = model.forward_batch(mb)
            torch.testing.assert_close(model.dist(pi_out).log_prob(mb.actions), mb.logp, **TOL)
            torch.testing.assert_close(values, mb.values, **TOL)
            seen += mb.logp.shape[0]
        assert seen == N * T
        whole = rollout.whole()
        torch.testing.assert_close(model.forward_batch(whole)[1], whole.values, **TOL)

    # a truncated episode bootstraps from V(final obs) given the state that saw its last step
    if env_kwargs:
        assert finals
        for (t, i), final in finals.items():
            start = max(s for s in range(t + 1) if s == 0 or rollout.dones[s - 1, i])
            seq = torch.cat([rollout.obs[start:t + 1, i], torch.as_tensor(final).view(1, -1)]).unsqueeze(1)
            with torch.no_grad():
                _, v, _ = model.seq(seq, rollout.states[start, i].unsqueeze(0))
            torch.testing.assert_close(v[-1, 0], rollout.trunc_values[t, i], **TOL)


def test_agent_act_carries_state_and_resets():
    cfg, venv, model, agent, _ = _setup("contrl/CartPoleNoVel-v1", {}, 1, 8, {})
    venv.close()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    obs = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    with torch.no_grad():
        pi_out, _, _ = model.seq(torch.from_numpy(obs).unsqueeze(1), model.initial_state(1))
    want = pi_out[:, 0].argmax(-1).numpy()
    got = [agent.act(o) for o in obs]
    assert got == list(want)
    assert agent.state.abs().sum() > 0
    agent.reset()
    assert agent.act(obs[0]) == want[0]
    agent.act(obs[1])
    agent.act(obs[0], episode_start=True)  # a new episode: from the zero state again
    torch.testing.assert_close(agent.state, model.step(torch.from_numpy(obs[:1]), model.initial_state(1))[2])


def test_masked_velocity_envs():
    from contrl.envs.make import make_env

    cases = {"contrl/CartPoleNoVel-v1": 2, "contrl/PendulumNoVel-v1": 2, "contrl/LunarLanderNoVel-v3": 5,
             "contrl/LunarLanderContinuousNoVel-v3": 5, "contrl/MountainCarContinuousNoVel-v0": 1}
    for env_id, dim in cases.items():
        e = make_env(env_id)
        obs, _ = e.reset(seed=0)
        assert e.observation_space.shape == (dim,) and obs.shape == (dim,), env_id
        e.close()
    full = make_env("CartPole-v1")
    masked = make_env("contrl/CartPoleNoVel-v1")
    o_full, _ = full.reset(seed=3)
    o_masked, _ = masked.reset(seed=3)
    assert np.array_equal(o_masked, o_full[[0, 2]])  # x and theta kept, the velocities gone
    assert isinstance(make_env("contrl/LunarLanderContinuousNoVel-v3").action_space, gym.spaces.Box)
    cfg = build_config("ppo", "LunarLander-v3", env_kwargs={"continuous": True}, mask_velocity=True)
    assert (cfg.env, cfg.env_kwargs) == ("contrl/LunarLanderContinuousNoVel-v3", {})
    assert cfg.preset == "LunarLander-v3-continuous"  # the base env's preset
    cfg = build_config("ppo", "CartPole-v1", mask_velocity=True, net="lstm")
    assert (cfg.env, cfg.preset, cfg.net.type) == ("contrl/CartPoleNoVel-v1", "CartPole-v1-lstm", "lstm")
    assert build_config("ppo", preset="chapter", net="lstm").preset == "chapter-lstm"


def test_chapter_lstm_preset_is_the_chapters_network():
    cfg = build_config("ppo", preset="chapter", net="lstm")
    model = build_model(cfg, gym.spaces.Box(-1, 1, (8,)), gym.spaces.Discrete(4))
    assert [type(m).__name__ for m in model.encoder] == ["Linear", "ReLU"]
    assert model.encoder[0].in_features == 8 and model.encoder[0].out_features == 64
    assert (model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers) == (64, 32, 1)
    assert model.pi_head.in_features == 32 and model.v_head.in_features == 32 and model.v_lstm is None


def test_memory_task_mlp_at_chance_lstm_solves_it(tmp_path):
    """Reward depends on the cue seen 5 steps earlier. Measured (seed 0, 30k steps, ~5 s each):
    MLP -0.04 over 200 episodes (chance is 0), LSTM 1.0."""
    common = dict(steps=30_000, seed=0, quiet=True, tensorboard=False,
                  overrides={"n_envs": 8, "n_steps": 32, "batch_size": 64, "n_epochs": 4, "lr": 3e-3,
                             "ent_coef": 0.01, "final_eval_episodes": 200})
    mlp = train("ppo", "tests.envs:RecallEnv", out=tmp_path / "mlp", net="mlp", **common)
    lstm = train("ppo", "tests.envs:RecallEnv", out=tmp_path / "lstm", net="lstm", **common)
    assert abs(mlp.summary["final_eval"]["mean"]) <= 0.25, mlp.summary  # chance: 0 +- 0.07
    assert lstm.summary["final_eval"]["mean"] >= 0.95, lstm.summary
    again = contrl.load(tmp_path / "lstm" / "checkpoints" / "latest.pt").evaluate(episodes=50, seed=5)
    assert again["mean"] >= 0.95  # the state is carried at evaluation after loading too
