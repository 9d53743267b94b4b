"""Gathering experience: ``collect`` (the acting loop every envs backend uses) and ``Worker``
(a copy of the learner away from it: a Hogwild worker process, a Ray actor).

Per step: normalise the N observations, one batched forward in numpy (``numpy_forward``: every
network contrl builds, MLP or LSTM, ACER's too -- the same layers and cells without torch's
per-operation cost; torch in inference mode for a network without one), sample from the run's
generator, step the vector env with env-ready actions, and write obs, action, log-prob,
value, (optionally scaled) reward and done into the preallocated rollout. A rollout for replay
(ACER's) keeps the raw observations and rewards instead: the rule normalises them with the
statistics in force when it learns from them (``ReplayInputs``). Where an env was
*truncated* (time limit) and not terminated, V(final observation) goes into ``trunc_values[t]``
so the returns bootstrap from the state reached; after a termination nothing is bootstrapped.

A recurrent network's state (``state``, ``[N, S]``, carried from rollout to rollout by the
caller and updated in place) is stored before every step, advanced by each forward and zeroed
for the envs whose episode ended, so the next step of a new episode starts from zero. The
bootstrap value of a truncated episode uses the state that saw its last observation.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from contrl.agent import Agent, build_model
from contrl.algos import make_rule
from contrl.envs.normalize import ReplayInputs, RewardScaler
from contrl.envs.vec import StepResult, VecEnv
from contrl.errors import Fault, NonFinite
from contrl.nets.distributions import NumpySampler
from contrl.storage.rollout import Rollout

_sum = np.add.reduce  # x.sum() without the method's Python wrapper (the acting loop sums at every step)


def collect(agent, venv: VecEnv, rollout: Rollout, generator: torch.Generator,
            scaler: Optional[RewardScaler] = None,
            on_step: Optional[Callable[[int, StepResult], None]] = None,
            state: Optional[torch.Tensor] = None) -> list:
    """Fill ``rollout`` with T steps from ``venv``, and ``rollout.last_values`` with V(s_T) of the
    observation after it. Returns the episodes that ended, as (t, env, return, length).

    Non-finite observations or rewards from the envs (and non-finite actions, checked once per
    rollout) raise :class:`NonFinite` naming the env and the step ``t``; with ``nan_policy:
    skip_update`` they are set to 0 instead and ``rollout.nonfinite`` says what, so that the
    rule drops the rollout's update. An env's exception (:class:`EnvError`) gets ``t`` too."""
    model = agent.model
    recurrent = model.recurrent
    h = state if state is not None else model.initial_state(venv.n)
    update_stats = agent.obs_norm is not None
    skip = agent.config.nan_policy == "skip_update"
    raw = rollout.mu is not None  # ACER: raw observations and rewards, for replay
    rewards_np, dones_np = rollout.rewards.numpy(), rollout.dones.numpy()  # views: cheap writes
    # acting through numpy (the same layers, LSTM cells and noise, a third of torch's per-step cost)
    fast = model.numpy_forward() if hasattr(model, "numpy_forward") else None
    if fast is not None:
        sample = NumpySampler(None if model.discrete else model.log_std.detach().numpy())
        obs_np, actions_np = rollout.obs.numpy(), rollout.actions.numpy()
        logp_np, values_np = rollout.logp.numpy(), rollout.values.numpy()
        mu_np = rollout.mu.numpy() if rollout.mu is not None else None
        states_np = rollout.states.numpy() if recurrent else None
    rollout.trunc_values.zero_()
    rollout.nonfinite = ""
    episodes: list = []
    obs = venv.obs
    if not np.isfinite(obs).all():
        _nonfinite(rollout, venv, -1, [("observation", obs)], skip)
    for t in range(rollout.T):
        if fast is not None:
            obs_t = agent.normalize(obs, update_stats)
            if recurrent:
                h_np = states_np[t] = h.numpy()
                pi_out, value, h_next = fast(obs_t, h_np)
                h_next = torch.from_numpy(h_next)
            else:
                pi_out, value = fast(obs_t)
                h_next = h
            action, logp = sample(pi_out, generator)
            if mu_np is not None:  # ACER's replay: the behaviour policy
                mu_np[t] = sample.params(pi_out)
        else:
            obs_t = agent.preprocess(obs, update_stats=update_stats)
            with torch.inference_mode():
                if recurrent:
                    rollout.states[t] = h
                pi_out, value, h_next = model.step(obs_t, h)
                dist = model.dist(pi_out)
                action = dist.sample(generator)
                logp = dist.log_prob(action)
                if rollout.mu is not None:  # ACER's replay: the behaviour policy
                    rollout.mu[t] = dist.params()
        try:
            res = venv.step(agent.to_env(action))
        except Fault as e:
            e.t = t
            raise
        done = res.terminated | res.truncated
        any_done = bool(res.episodes)  # (an episode is reported exactly where one ended)
        # one cheap test (a sum is non-finite if any term is, or on overflow: then the exact check finds nothing)
        total = float(_sum(res.obs, None)) + float(_sum(res.rewards, None))
        if not math.isfinite(total + float(_sum(res.final_obs, None)) if any_done else total):
            _nonfinite(rollout, venv, t, [("observation", res.obs), ("reward", res.rewards),
                                          ("final observation", res.final_obs)], skip)
        rewards = scaler(res.rewards, done) if scaler is not None else res.rewards
        if raw:  # replay normalises and scales when it learns (ReplayInputs)
            obs_t, rewards = np.asarray(obs, np.float32).reshape(venv.n, -1), res.rewards
            if fast is None:
                obs_t = torch.from_numpy(obs_t)
        if fast is not None:
            obs_np[t], actions_np[t], logp_np[t], values_np[t] = obs_t, action, logp, value
        else:
            rollout.obs[t] = obs_t
            rollout.actions[t] = action
            rollout.logp[t] = logp
            rollout.values[t] = value
        rewards_np[t] = rewards
        dones_np[t] = done
        if rollout.mu is not None:  # ACER's replay: how and where episodes ended
            rollout.terminated[t] = torch.from_numpy(res.terminated)
            if any_done:
                idx = np.flatnonzero(done)
                final = res.final_obs[idx]
                rollout.final_obs[t, torch.from_numpy(idx)] = torch.from_numpy(
                    np.asarray(final, np.float32).reshape(len(idx), -1)) if raw else agent.preprocess(final)
        boot = res.truncated & ~res.terminated if any_done else None
        if boot is not None and boot.any():
            idx = np.flatnonzero(boot)
            with torch.inference_mode():
                v_final = model.value_step(agent.preprocess(res.final_obs[idx]), h_next[torch.from_numpy(idx)])
            rollout.trunc_values[t, torch.from_numpy(idx)] = v_final
        if recurrent and any_done:
            with torch.inference_mode():
                h_next[torch.from_numpy(done)] = 0.0  # a new episode starts from the zero state
        episodes.extend((t, *e) for e in res.episodes)
        if on_step is not None:
            on_step(t, res)
        obs, h = res.obs, h_next
    obs_last = agent.preprocess(obs)
    if rollout.obs_last is not None:
        rollout.obs_last.copy_(torch.from_numpy(np.asarray(obs, np.float32).reshape(venv.n, -1)) if raw else obs_last)
    with torch.inference_mode():
        last_values = model.value_step(obs_last, h)
    rollout.last_values.copy_(last_values)
    if state is not None and recurrent:
        state.copy_(h)
    if not torch.isfinite(rollout.actions).all():  # a policy gone astray (e.g. an infinite std)
        _nonfinite(rollout, venv, rollout.T - 1, [("action", rollout.actions.transpose(0, 1).numpy())], skip)
    return episodes


def _nonfinite(rollout: Rollout, venv: VecEnv, t: int, arrays: list, skip: bool) -> None:
    """The first non-finite value of ``arrays`` ([n, ...] per env): raise, or (skip) zero them
    all and mark the rollout."""
    for what, arr in arrays:
        bad = ~np.isfinite(np.asarray(arr, np.float64).reshape(len(arr), -1)).all(1)
        if bad.any():
            env = int(np.flatnonzero(bad)[0])
            msg = (f"environment '{venv.env_id}' (env {venv.first + env}) returned a non-finite {what} "
                   f"{np.asarray(arr[env]).reshape(-1)[:6].tolist()}")
            if what == "action":
                msg = f"the policy produced a non-finite action for env {venv.first + env}"
            if not skip:
                e = NonFinite(msg)
                e.t = t
                raise e
            rollout.nonfinite = rollout.nonfinite or msg
    if skip:
        for _, arr in arrays:
            np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

def episode_rows(episodes: list, step: int, n: int, first_env: int = 0) -> list:
    """``collect``'s episodes of a rollout of ``n`` envs that started at ``step``, as the logs
    number them: (step at its end, env, return, length), the envs counted from ``first_env``."""
    return [(step + (t + 1) * n, first_env + env, ret, length) for t, env, ret, length in episodes]


class Worker:
    """A copy of the learner away from it (a Hogwild worker process, a Ray actor): ``n_envs``
    envs, a local model with its agent and generator, the run's update rule on that model (with
    a replay memory of its own where the rule keeps one), its rollout and the recurrent state it
    carries across rollouts. Whoever holds it loads the current weights into ``rule.weights()``
    before asking for a rollout or a gradient."""

    def __init__(self, cfg, seeds: list[int], torch_seed: int, obs_norm: Optional[Callable] = None,
                 gradients: bool = True, first: int = 0, reward_stats: Optional[dict] = None):
        """``obs_norm(dim)`` makes the worker's observation normaliser; ``gradients=False``: a
        worker that only collects (no replay memory, rewards left unscaled for the learner);
        ``first``: the index of its first env among the run's; ``reward_stats``: the statistics
        its reward scaler continues from (a resumed or restarted worker)."""
        self.venv = VecEnv(cfg.env, cfg.env_kwargs, seeds, first=first)
        spaces = self.venv.observation_space, self.venv.action_space
        model = build_model(cfg, *spaces)
        self.agent = Agent(cfg, model, *spaces, obs_norm(self.venv.obs_dim) if obs_norm is not None else None)
        self.gen = torch.Generator().manual_seed(torch_seed)
        self.n = self.venv.n
        self.rule = make_rule(cfg, model, self.n, memory=gradients)
        self.rollout = self.rule.new_rollout(self.n)
        self.rnn_state = model.initial_state(self.n)  # carried across rollouts (truncated BPTT at their ends)
        self.scaler = RewardScaler(self.n, self.rule.cfg.gamma) if cfg.norm_reward and gradients else None
        if self.scaler is not None and reward_stats:
            self.scaler.rms.load_state_dict(reward_stats)
        self.rule.inputs = ReplayInputs(self.agent.obs_norm, self.scaler)
        self.pending = iter(())  # the gradients the last rollout still has to give

    def collect(self) -> list:
        return collect(self.agent, self.venv, self.rollout, self.gen, self.scaler, None, self.rnn_state)

    def gradients(self) -> tuple[dict, int, list]:
        """The rule's next gradient, into the local model's ``.grad``: one the last rollout still
        has (ACER's replays), else the first of a new rollout. Returns (stats, env steps, episodes)."""
        stats = next(self.pending, None)
        if stats is not None:
            return stats, 0, []
        episodes = self.collect()
        self.pending = self.rule.updates(self.rollout, self.gen)
        return next(self.pending), self.rollout.T * self.n, episodes

    def grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.rule.params]
