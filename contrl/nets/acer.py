"""ACER's network: the actor-critic torso plus Q heads (Wang et al. 2016).

- Discrete actions: a Q head ``Q(s, .)`` on the critic's torso output; V(s) = sum_a pi(a|s) Q(s, a).
- Continuous actions: a Stochastic Dueling Network. The torso's value head gives V(s) and an
  advantage MLP on (critic features, action) gives A(s, a); the rule forms
  ``Q~(s, a) = V(s) + A(s, a) - mean_i A(s, u_i)`` with ``u_i ~ pi(.|s)``.

The torso is the MLP actor-critic or, with ``net.type: lstm``, the recurrent one. ACERNet
exposes the interface every network shares (``initial_state``, ``step``, ``value_step``,
``dist``), so acting, evaluation and play treat it like the others.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import nn
from torch.nn import functional as F

from contrl.config import NetConfig
from contrl.nets.actor_critic import ActorCritic, _plan, _run, init_orthogonal, mlp
from contrl.nets.recurrent import RecurrentActorCritic


class ACERNet(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        self.body = (RecurrentActorCritic if cfg.type == "lstm" else ActorCritic)(obs_dim, action_space, cfg)
        self.recurrent, self.state_size = self.body.recurrent, self.body.state_size
        self.discrete, self.obs_dim, self.act_shape = self.body.discrete, obs_dim, self.body.act_shape
        act_dim = self.act_dim = self.body.act_dim
        width = self.body.feature_dim
        if self.discrete:
            self.body.v_head = None  # V comes from Q: no separate value head to leave untrained
            self.q_head = nn.Linear(width, act_dim)
            if cfg.ortho_init:
                init_orthogonal(self.q_head, 1.0)
        else:
            self.adv_torso = mlp(width + act_dim, [width], cfg.activation)
            self.adv_head = nn.Linear(width, 1)
            self._adv_plan = _plan(self.adv_torso)
            if cfg.ortho_init:
                init_orthogonal(self.adv_torso, math.sqrt(2))
                init_orthogonal(self.adv_head, 1.0)

    @property
    def log_std(self):
        return self.body.log_std

    def dist(self, pi_out: torch.Tensor):
        return self.body.dist(pi_out)

    # -- the heads ------------------------------------------------------------------------------
    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, critic features) for flat observations ``[B, D]`` (MLP)."""
        return self.body.features(obs)

    def seq_features(self, obs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for sequences ``[L, B, D]`` from initial states ``[B, S]`` (LSTM: one call)."""
        if self.recurrent:
            return self.body.seq_features(obs, state)[:2]
        L, B = obs.shape[:2]
        pi, hv = self.body.features(obs.reshape(L * B, -1))
        return pi.reshape(L, B, -1), hv.reshape(L, B, -1)

    def q_values(self, hv: torch.Tensor) -> torch.Tensor:
        """Discrete: Q(s, .) ``[B, A]``."""
        return F.linear(hv, self.q_head.weight, self.q_head.bias)

    def v(self, pi_out: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
        """V(s): the expectation of Q under pi (discrete), or the value head (continuous)."""
        if self.discrete:
            return (torch.softmax(pi_out, -1) * self.q_values(hv)).sum(-1)
        return F.linear(hv, self.body.v_head.weight, self.body.v_head.bias).squeeze(-1)

    def advantage(self, hv: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Continuous: A(s, a) for actions ``[..., B, A]`` (any leading sample dims) -> ``[..., B]``."""
        x = torch.cat([hv.expand(actions.shape[:-1] + hv.shape[-1:]), actions], -1)
        return F.linear(_run(self._adv_plan, x), self.adv_head.weight, self.adv_head.bias).squeeze(-1)

    # -- the interface every network shares ------------------------------------------------------
    def initial_state(self, n: int) -> torch.Tensor:
        return self.body.initial_state(n)

    def step(self, obs: torch.Tensor, state: torch.Tensor):
        if self.recurrent:
            pi_out, hv, state = self.body.step_features(obs, state)
        else:
            pi_out, hv = self.features(obs)
        return pi_out, self.v(pi_out, hv), state

    def value_step(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.step(obs, state)[1]
