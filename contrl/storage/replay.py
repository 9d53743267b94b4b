"""ACER's replay memory: trajectory segments in preallocated tensors.

A segment is what the runner collects between two updates: ``k`` steps of each of ``N`` envs.
For each step it keeps the observation, action, reward, how the step ended (terminated /
truncated), the final observation of an episode that ended there (truncation bootstraps from
it) and the behaviour policy mu (discrete: its log-probabilities; continuous: the Gaussian's
mean and log-std), plus the observation after the k-th step and, for a recurrent network, the
state each env's column started from. Observations and rewards are kept raw (the learner
normalises them with the statistics in force when it samples them). Capacity is given in transitions
and rounded down to whole segments; the oldest segment is overwritten first. Everything is
allocated up front (``nbytes`` is what the run summary reports), so memory cannot grow.

Sampling draws ``B`` (segment, env) columns uniformly with replacement and returns them as one
:class:`Segment` of ``[k, B]`` tensors, the same shape the on-policy update gets.
:class:`SegmentForward` plans how a segment goes through a network in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from contrl.storage.rollout import Rollout, segments

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
                "next": self.next, "count": self.count, "raw": True}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.next = int(state["count"]), int(state["next"])
        for f in FIELDS + ("state0",):
            getattr(self, f)[: self.count].copy_(state[f])


class SegmentForward:
    """How a ``[k, B]`` segment goes through a network in one call, bootstrap inputs included.

    Every episode piece of a column (the column cut where an episode ends) has one bootstrap
    point after its last step: the final observation where the episode ended there (a
    truncation bootstraps V(final obs); a termination's value is never used), else the
    observation after the segment. MLP: the k*B observations and the bootstrap inputs are one
    flat batch. LSTM: each piece is a sequence (its steps, then its bootstrap input) from the
    column's stored initial state, or from zero after an episode start, so the bootstrap input
    is seen with the state that saw the piece's last step; the pieces are padded to
    ``[L, pieces]`` and run as one LSTM call. ``step_rows`` picks the k*B step outputs in
    time-major order, ``boot_rows`` the bootstrap outputs.
    """

    def __init__(self, seg: Segment, recurrent: bool):
        k, B = seg.rewards.shape
        n, dim = k * B, seg.obs.shape[-1]
        ended = seg.terminated | seg.truncated
        goes_on = ~ended[k - 1]  # columns whose last episode continues after the segment
        # the bootstrap points (step, column): every episode end, then the last step of each open column
        ends, open_cols = ended.nonzero(), goes_on.nonzero().squeeze(1)
        self.boot_step = torch.cat([ends[:, 0], torch.full_like(open_cols, k - 1)])
        self.boot_col = torch.cat([ends[:, 1], open_cols])
        self.boot_ended = torch.arange(self.boot_step.shape[0]) < ends.shape[0]
        boot_obs = torch.cat([seg.final_obs[ended], seg.obs[k][goes_on]])
        self.k, self.B, self.recurrent = k, B, recurrent
        if not recurrent:
            self.inputs = torch.cat([seg.obs[:k].reshape(n, dim), boot_obs])
            self.step_rows = torch.arange(n)
            self.boot_rows = n + torch.arange(boot_obs.shape[0])
            return
        # the rollout's sequence cutting (env-major: column b's step t is at b * k + t), one piece per episode
        start, length = segments(ended, k)
        pieces = start.shape[0]
        col, first_t = start // k, start % k
        # the bootstrap point each piece ends at, found by (step, column)
        key = self.boot_step * B + self.boot_col
        order = torch.argsort(key)
        boot_of_piece = order[torch.searchsorted(key[order], (first_t + length - 1) * B + col)]
        table = torch.cat([seg.obs[:k].transpose(0, 1).reshape(n, dim), boot_obs[boot_of_piece]])
        t = torch.arange(int(length.max()) + 1).unsqueeze(1)
        # [L, pieces, D]: each piece's steps, then its bootstrap row (which also pads)
        self.inputs = table[torch.where(t < length, start + t, n + torch.arange(pieces))]
        state0 = seg.state0[col]
        self.initial_state = torch.where((first_t == 0).unsqueeze(1), state0, torch.zeros_like(state0))
        # where each output lands in the flattened [L * pieces] outputs
        piece_of = torch.repeat_interleave(torch.arange(pieces), length)  # of every env-major step
        row = (torch.arange(n) - start[piece_of]) * pieces + piece_of
        time_major = (torch.arange(k).unsqueeze(1) + torch.arange(B).unsqueeze(0) * k).reshape(n)
        self.step_rows = row[time_major]
        self.boot_rows = torch.empty(pieces, dtype=torch.long)
        self.boot_rows[boot_of_piece] = length * pieces + torch.arange(pieces)

    def run(self, net) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, critic features) of ``net`` at every row of the plan."""
        if not self.recurrent:
            return net.features(self.inputs)
        pi, hv = net.seq_features(self.inputs, self.initial_state)
        return pi.reshape(-1, pi.shape[-1]), hv.reshape(-1, hv.shape[-1])

    def bootstrap_values(self, v_boot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V(s_k) per column [B], V(final obs) [k, B] where an episode ended) from the values at
        the bootstrap rows; zero where there is nothing to bootstrap."""
        v_last = torch.zeros(self.B)
        v_final = torch.zeros(self.k, self.B)
        ended = self.boot_ended
        v_final[self.boot_step[ended], self.boot_col[ended]] = v_boot[ended]
        v_last[self.boot_col[~ended]] = v_boot[~ended]
        return v_last, v_final
