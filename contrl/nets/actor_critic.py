"""Actor-critic networks: a torso (MLP; shared or separate for pi and V) and heads chosen from
the action space (Discrete -> categorical, Box -> diagonal Gaussian with a learned
state-independent log-std)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from contrl.config import NetConfig
from contrl.nets.distributions import Categorical, DiagGaussian

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu}


def mlp(in_dim: int, hidden: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), ACTIVATIONS[activation]()]
        in_dim = h
    return nn.Sequential(*layers)


def init_orthogonal(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class TwinMLP(nn.Module):
    """Two MLPs of the same shape (actor and critic torsos) on the same input, computed as one:
    the first layer is one wide Linear, each later layer one batched matmul over the pair.
    Mathematically two independent MLPs; about half the operator calls of two ``nn.Sequential``
    (the PPO update is dominated by per-op overhead at these sizes)."""

    def __init__(self, in_dim: int, hidden: list[int], activation: str, ortho_init: bool):
        super().__init__()
        self.act = ACTIVATION_FNS[activation]
        self.h0 = hidden[0]
        self.first = nn.Linear(in_dim, 2 * hidden[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for h_in, h_out in zip(hidden[:-1], hidden[1:]):
            self.weights.append(nn.Parameter(torch.empty(2, h_in, h_out)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, h_out)))
        with torch.no_grad():
            for half in (slice(0, self.h0), slice(self.h0, 2 * self.h0)):
                w, b = self.first.weight[half], self.first.bias[half]
                _init_layer(w, b, ortho_init, math.sqrt(2))
            for w, b in zip(self.weights, self.biases):
                for i in range(2):  # w[i] is W^T of a Linear(h_in, h_out)
                    _init_layer(w[i].T, b[i, 0], ortho_init, math.sqrt(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.first(x))
        h = h.view(*x.shape[:-1], 2, self.h0).movedim(-2, 0)  # [2, ..., h0]
        if self.weights:
            lead = h.shape[1:-1]
            h = h.reshape(2, -1, self.h0)
            for w, b in zip(self.weights, self.biases):
                h = self.act(torch.baddbmm(b, h, w))
            h = h.view(2, *lead, h.shape[-1])
        return h[0], h[1]


def _init_layer(w: torch.Tensor, b: torch.Tensor, ortho: bool, gain: float) -> None:
    """Orthogonal (gain, zero bias), or torch's default Linear init (U(+-1/sqrt(fan_in)))."""
    if ortho:
        nn.init.orthogonal_(w, gain)
        b.zero_()
    else:
        bound = 1.0 / math.sqrt(w.shape[1])
        w.uniform_(-bound, bound)
        b.uniform_(-bound, bound)


class ActorCritic(nn.Module):
    """pi(a|s) and V(s). ``forward(obs) -> (distribution parameters, value)``."""

    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        act_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        # shared: one torso feeds both heads; otherwise two torsos computed together
        self.torso = (mlp(obs_dim, cfg.hidden, cfg.activation) if cfg.shared
                      else TwinMLP(obs_dim, cfg.hidden, cfg.activation, cfg.ortho_init))
        self.shared = cfg.shared
        width = cfg.hidden[-1]
        self.pi_head = nn.Linear(width, act_dim)
        self.v_head = nn.Linear(width, 1)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        if cfg.ortho_init:
            if cfg.shared:
                init_orthogonal(self.torso, math.sqrt(2))
            init_orthogonal(self.pi_head, 0.01)
            init_orthogonal(self.v_head, 1.0)

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared:
            h = self.torso(obs)
            return h, h
        return self.torso(obs)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_pi, h_v = self.features(obs)
        return self.pi_head(h_pi), self.v_head(h_v).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v_head(self.features(obs)[1]).squeeze(-1)

    def dist(self, pi_out: torch.Tensor):
        if self.discrete:
            return Categorical(pi_out)
        return DiagGaussian(pi_out, self.log_std)
