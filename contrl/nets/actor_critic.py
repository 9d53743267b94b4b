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


class ActorCritic(nn.Module):
    """pi(a|s) and V(s). ``forward(obs) -> (distribution parameters, value)``."""

    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        act_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.pi_torso = mlp(obs_dim, cfg.hidden, cfg.activation)
        self.v_torso = None if cfg.shared else mlp(obs_dim, cfg.hidden, cfg.activation)
        width = cfg.hidden[-1]
        self.pi_head = nn.Linear(width, act_dim)
        self.v_head = nn.Linear(width, 1)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        if cfg.ortho_init:
            init_orthogonal(self.pi_torso, math.sqrt(2))
            if self.v_torso is not None:
                init_orthogonal(self.v_torso, math.sqrt(2))
            init_orthogonal(self.pi_head, 0.01)
            init_orthogonal(self.v_head, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pi_torso(obs)
        hv = h if self.v_torso is None else self.v_torso(obs)
        return self.pi_head(h), self.v_head(hv).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.pi_torso(obs) if self.v_torso is None else self.v_torso(obs)
        return self.v_head(h).squeeze(-1)

    def dist(self, pi_out: torch.Tensor):
        if self.discrete:
            return Categorical(pi_out)
        return DiagGaussian(pi_out, self.log_std)
