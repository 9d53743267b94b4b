"""Collecting one ``[T, N]`` rollout: the acting loop both runners share.

Per step: normalise the N observations, one batched forward in inference mode, sample from the
run's generator, step the vector env with env-ready actions, and write obs, action, log-prob,
value, (optionally scaled) reward and done into the preallocated rollout. Where an env was
*truncated* (time limit) and not terminated, V(final observation) goes into ``trunc_values[t]``
so the returns bootstrap from the state reached; after a termination nothing is bootstrapped.

A recurrent network's state (``state``, ``[N, S]``, carried from rollout to rollout by the
caller and updated in place) is stored before every step, advanced by each forward and zeroed
for the envs whose episode ended, so the next step of a new episode starts from zero. The
bootstrap value of a truncated episode uses the state that saw its last observation.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from contrl.envs.normalize import RewardScaler
from contrl.envs.vec import StepResult, VecEnv
from contrl.storage.rollout import Rollout


def collect(agent, venv: VecEnv, rollout: Rollout, generator: torch.Generator,
            scaler: Optional[RewardScaler] = None,
            on_step: Optional[Callable[[int, StepResult], None]] = None,
            state: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fill ``rollout`` with T steps from ``venv``; returns V(s_T) of the observation after it."""
    model = agent.model
    recurrent = model.recurrent
    h = state if state is not None else model.initial_state(venv.n)
    update_stats = agent.obs_norm is not None
    rewards_np, dones_np = rollout.rewards.numpy(), rollout.dones.numpy()  # views: cheap writes
    rollout.trunc_values.zero_()
    obs = venv.obs
    for t in range(rollout.T):
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
        res = venv.step(agent.to_env(action))
        done = res.terminated | res.truncated
        rewards = scaler(res.rewards, done) if scaler is not None else res.rewards
        rollout.obs[t] = obs_t
        rollout.actions[t] = action
        rollout.logp[t] = logp
        rollout.values[t] = value
        rewards_np[t] = rewards
        dones_np[t] = done
        if rollout.mu is not None:  # ACER's replay: how and where episodes ended
            rollout.terminated[t] = torch.from_numpy(res.terminated)
            if done.any():
                idx = np.flatnonzero(done)
                rollout.final_obs[t, torch.from_numpy(idx)] = agent.preprocess(res.final_obs[idx])
        boot = res.truncated & ~res.terminated
        if boot.any():
            idx = np.flatnonzero(boot)
            with torch.inference_mode():
                v_final = model.value_step(agent.preprocess(res.final_obs[idx]), h_next[torch.from_numpy(idx)])
            rollout.trunc_values[t, torch.from_numpy(idx)] = v_final
        if recurrent and done.any():
            with torch.inference_mode():
                h_next[torch.from_numpy(done)] = 0.0  # a new episode starts from the zero state
        if on_step is not None:
            on_step(t, res)
        obs, h = res.obs, h_next
    obs_last = agent.preprocess(obs)
    if rollout.obs_last is not None:
        rollout.obs_last.copy_(obs_last)
    with torch.inference_mode():
        last_values = model.value_step(obs_last, h)
    if state is not None and recurrent:
        state.copy_(h)
    return last_values
