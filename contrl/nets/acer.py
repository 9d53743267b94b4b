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
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contrl.config import NetConfig
from contrl.nets.actor_critic import (_ACT_BACKWARD, _ACT_INPLACE, ActorCritic, _back, _grad_buffer, _linear_back,
                                      _plan, _run, _run_keep, init_orthogonal, mlp)
from contrl.nets.recurrent import RecurrentActorCritic


class ACERNet(nn.Module):
    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        self.body = (RecurrentActorCritic if cfg.type == "lstm" else ActorCritic)(obs_dim, action_space, cfg)
        self.recurrent, self.state_size = self.body.recurrent, self.body.state_size
        self.hand_backward = not self.recurrent  # ACER's update without autograd (the MLP torso's backward)
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
        """Continuous: A(s, a) for actions ``[..., B, A]`` (any leading sample dims) -> ``[..., B]``.
        The first layer on (features, action) is W_h hv + W_a a + b: the features' product is taken
        once per state, not once per sampled action (the SDN's mean over u_i reads S actions per state)."""
        lin, act = self._adv_plan[0]
        width = hv.shape[-1]
        z = F.linear(hv, lin.weight[:, :width], lin.bias) + F.linear(actions, lin.weight[:, width:])
        return F.linear(_run(self._adv_plan[1:], act(z)), self.adv_head.weight, self.adv_head.bias).squeeze(-1)

    # -- forward and backward by hand (issue 17; an MLP torso): see ActorCritic.features_cached
    def features_cached(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        return self.body.features_cached(obs)

    def features_backward(self, cache: tuple, g_pi: torch.Tensor, g_hv: torch.Tensor,
                          g_log_std: torch.Tensor | None = None) -> None:
        self.body.features_backward(cache, g_pi, g_hv, g_log_std)

    def policy_out(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body.policy_out(obs)

    def q_backward(self, g_q: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
        """Discrete: the Q head's ``.grad`` from dL/dQ(s, .) ``[B, A]``; returns dL/d(critic features)."""
        return _linear_back(self.q_head, g_q, hv)

    def v_backward(self, g_v: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
        """Continuous: the value head's ``.grad`` from dL/dV ``[B]``; returns dL/d(critic features)."""
        return _linear_back(self.body.v_head, g_v.unsqueeze(1), hv)

    def advantage_cached(self, hv: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """``advantage`` without autograd (``actions`` ``[S, B, A]``), and what ``advantage_backward`` needs."""
        lin, act = self._adv_plan[0]
        width = hv.shape[-1]
        with torch.no_grad():
            z = torch.add(F.linear(actions, lin.weight[:, width:]), F.linear(hv, lin.weight[:, :width], lin.bias))
            hs = _run_keep(self._adv_plan[1:], _ACT_INPLACE[act](z).reshape(-1, z.shape[-1]))
            out = F.linear(hs[-1], self.adv_head.weight, self.adv_head.bias)
        return out.reshape(actions.shape[:-1]), (hs, hv, actions)

    def advantage_backward(self, cache: tuple, g_adv: torch.Tensor) -> torch.Tensor:
        """The advantage MLP's ``.grad`` from dL/dA ``[S, B]`` (the shape ``advantage_cached``
        returned); returns dL/d(critic features) ``[B, width]``, summed over the S actions per state."""
        hs, hv, actions = cache
        lin, act = self._adv_plan[0]
        width = hv.shape[-1]
        with torch.no_grad():
            g = _linear_back(self.adv_head, g_adv.reshape(-1, 1), hs[-1])
            g = _back(self._adv_plan[1:], hs, g, need_input=True)  # (no layers after the first: g itself)
            g_z = _ACT_BACKWARD[act](g, hs[0]).reshape(actions.shape[:-1] + (-1,))  # [S, B, H]
            g_zs = g_z.sum(0)  # the features' part of every sample of a state, summed
            w_grad = _grad_buffer(lin.weight)
            torch.mm(g_zs.t(), hv, out=w_grad[:, :width])
            torch.mm(g_z.reshape(-1, g_z.shape[-1]).t(), actions.reshape(-1, actions.shape[-1]), out=w_grad[:, width:])
            torch.sum(g_zs, 0, out=_grad_buffer(lin.bias))
            return torch.mm(g_zs, lin.weight[:, :width])

    def numpy_forward(self):
        """Acting through numpy as the torso's ``numpy_forward`` (an LSTM torso's takes and returns
        the recurrent state too): obs -> (distribution parameters, V), V = sum_a pi(a|s) Q(s, a)
        for discrete actions."""
        if not self.discrete:
            return self.body.numpy_forward()
        features = self.body.numpy_forward(critic_head=self.q_head)

        def forward(obs: np.ndarray, *state: np.ndarray) -> tuple:
            pi, q, *new_state = features(obs, *state)
            e = np.exp(pi - pi.max(-1, keepdims=True))
            return pi, np.add.reduce(e * q, -1) / np.add.reduce(e, -1), *new_state

        return forward

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
