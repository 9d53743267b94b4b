"""ACER's replay memory: trajectory segments in preallocated tensors.

A segment is what the runner collects between two updates: ``k`` steps of each of ``N`` envs.
For each step it keeps the observation, action, reward, how the step ended (terminated /
truncated), the final observation of an episode that ended there (truncation bootstraps from
it) and the behaviour policy mu (discrete: its log-probabilities; continuous: the Gaussian's
mean and log-std), plus the observation after the k-th step and, for a recurrent network, the
state each env's column started from. Capacity is given in transitions
and rounded down to whole segments; the oldest segment is overwritten first. Everything is
allocated up front (``nbytes`` is what the run summary reports), so memory cannot grow.

Sampling draws ``B`` (segment, env) columns uniformly with replacement and returns them as one
:class:`Segment` of ``[k, B]`` tensors, the same shape the on-policy update gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from contrl.storage.rollout import Rollout

FIELDS = ("obs", "final_obs", "actions", "rewards", "terminated", "truncated", "mu")  # [.., k, N, ..]


@dataclass
class Segment:
    """k steps of B env columns: ``obs`` ``[k + 1, B, D]`` (the last row is the observation after
    the segment), the others ``[k, B, ...]``."""

    obs: torch.Tensor
    final_obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    mu: torch.Tensor
    state0: Optional[torch.Tensor] = None  # [B, S]: the recurrent state each column started from

    @staticmethod
    def from_rollout(r: Rollout) -> "Segment":
        dones = r.dones > 0
        return Segment(torch.cat([r.obs, r.obs_last.unsqueeze(0)]), r.final_obs, r.actions, r.rewards,
                       r.terminated, dones & ~r.terminated, r.mu, r.states[0])


def behaviour_dim(action_space) -> int:
    """Width of the stored behaviour policy: A log-probs (Discrete), or mean and log-std (Box)."""
    if hasattr(action_space, "n"):
        return int(action_space.n)
    return 2 * int(math.prod(action_space.shape))


class ReplayBuffer:
    @staticmethod
    def size(capacity: int, k: int, n_envs: int, obs_dim: int, act_shape: tuple, mu_dim: int,
             state_size: int = 0) -> tuple[int, int]:
        """(transitions held, bytes) of a buffer with these arguments, without allocating it."""
        segments = max(1, capacity // (k * n_envs))
        per_step = 4 * (2 * obs_dim + math.prod(act_shape) + 1 + mu_dim) + 2  # floats + 2 bool flags
        per_column = 4 * (obs_dim + state_size)  # the observation after the segment, the initial state
        return segments * k * n_envs, segments * (k * n_envs * per_step + n_envs * per_column)

    def __init__(self, capacity: int, k: int, n_envs: int, obs_dim: int, act_shape: tuple, mu_dim: int,
                 state_size: int = 0):
        self.k, self.n_envs = k, n_envs
        self.segments = max(1, capacity // (k * n_envs))
        S = self.segments
        self.obs = torch.zeros(S, k + 1, n_envs, obs_dim)
        self.final_obs = torch.zeros(S, k, n_envs, obs_dim)
        self.actions = torch.zeros((S, k, n_envs) + tuple(act_shape))
        self.rewards = torch.zeros(S, k, n_envs)
        self.terminated = torch.zeros(S, k, n_envs, dtype=torch.bool)
        self.truncated = torch.zeros(S, k, n_envs, dtype=torch.bool)
        self.mu = torch.zeros(S, k, n_envs, mu_dim)
        self.state0 = torch.zeros(S, n_envs, state_size)
        self.next = 0  # the slot the next segment goes to
        self.count = 0  # segments held

    @property
    def capacity(self) -> int:
        """Transitions it can hold."""
        return self.segments * self.k * self.n_envs

    @property
    def transitions(self) -> int:
        """Transitions it holds."""
        return self.count * self.k * self.n_envs

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in FIELDS + ("state0",))

    def add(self, seg: Segment) -> None:
        i = self.next
        for f in FIELDS:
            getattr(self, f)[i].copy_(getattr(seg, f))
        if seg.state0 is not None:
            self.state0[i].copy_(seg.state0)
        self.next = (i + 1) % self.segments
        self.count = min(self.count + 1, self.segments)

    def sample(self, batch: int, generator: torch.Generator) -> Segment:
        """``batch`` columns (segment, env) drawn uniformly with replacement."""
        if self.count == 0:
            raise ValueError("sample() from an empty replay buffer")
        seg = torch.randint(self.count, (batch,), generator=generator)
        env = torch.randint(self.n_envs, (batch,), generator=generator)
        # [S, k, N, ...][seg, :, env] -> [batch, k, ...] -> time-major [k, batch, ...]
        return Segment(*(getattr(self, f)[seg, :, env].transpose(0, 1) for f in FIELDS), self.state0[seg, env])

    def state_dict(self) -> dict:
        return {**{f: getattr(self, f)[: self.count].clone() for f in FIELDS + ("state0",)},
                "next": self.next, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.next = int(state["count"]), int(state["next"])
        for f in FIELDS + ("state0",):
            getattr(self, f)[: self.count].copy_(state[f])
