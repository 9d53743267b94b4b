"""On-policy rollout storage: preallocated ``[T, N, ...]`` tensors, GAE, minibatches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    trunc_values: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a ``[T, N]`` rollout.

    ``dones[t]`` marks that the episode ended at step t (terminated or truncated): nothing
    flows from step t+1 back into step t. ``trunc_values[t]`` is V(final observation) where the
    episode was *truncated* (time limit) at step t and 0 elsewhere, so a truncated step still
    bootstraps from the value of the state it reached while a terminated one does not.
    ``last_values`` is V(s_T) for the observation after the rollout.
    Returns (advantages, returns = advantages + values).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_values)
    next_values = last_values
    for t in range(T - 1, -1, -1):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * (next_values * not_done + trunc_values[t]) - values[t]
        last = delta + gamma * lam * not_done * last
        adv[t] = last
        next_values = values[t]
    return adv, adv + values


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class Rollout:
    """Experience of T steps from N envs, stored as ``[T, N, ...]`` float32 tensors."""

    def __init__(self, T: int, N: int, obs_dim: int, act_shape: tuple):
        self.T, self.N = T, N
        self.obs = torch.zeros(T, N, obs_dim)
        self.actions = torch.zeros((T, N) + act_shape)
        self.logp = torch.zeros(T, N)
        self.values = torch.zeros(T, N)
        self.rewards = torch.zeros(T, N)
        self.dones = torch.zeros(T, N)
        self.trunc_values = torch.zeros(T, N)
        self.advantages = torch.zeros(T, N)
        self.returns = torch.zeros(T, N)

    def finish(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, self.dones, self.trunc_values, last_values, gamma, lam
        )

    def flat(self) -> Batch:
        n = self.T * self.N
        return Batch(
            self.obs.reshape(n, -1),
            self.actions.reshape((n,) + self.actions.shape[2:]),
            self.logp.reshape(n),
            self.values.reshape(n),
            self.advantages.reshape(n),
            self.returns.reshape(n),
        )


def minibatches(batch: Batch, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled minibatches covering the batch once; a short last one is kept if non-empty.

    The fields are packed into one ``[n, k]`` tensor so each minibatch is one gather.
    """
    n = batch.obs.shape[0]
    act_shape = batch.actions.shape[1:]
    cols = [batch.obs, batch.actions.reshape(n, -1)] + [
        getattr(batch, f).unsqueeze(1) for f in ("logp", "values", "advantages", "returns")
    ]
    widths = [c.shape[1] for c in cols]
    packed = torch.cat(cols, 1)
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        rows = packed[perm[start : start + batch_size]]
        obs, actions, logp, values, adv, ret = rows.split(widths, 1)
        b = rows.shape[0]
        yield Batch(obs, actions.reshape((b,) + act_shape), logp.squeeze(1), values.squeeze(1),
                    adv.squeeze(1), ret.squeeze(1))
