"""Actor-critic networks: a torso (MLP; shared or separate for pi and V) and heads chosen from
the action space (Discrete -> categorical, Box -> diagonal Gaussian with a learned
state-independent log-std)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contrl.config import NetConfig
from contrl.nets.distributions import Categorical, DiagGaussian

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_ACT_FNS = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu}


def mlp(in_dim: int, hidden: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), ACTIVATIONS[activation]()]
        in_dim = h
    return nn.Sequential(*layers)


def _plan(seq: nn.Sequential) -> list:
    """[(linear, activation function)] of an mlp(), to run it without per-module call overhead
    (about 15 us less per forward on these small nets; the modules keep the parameters)."""
    mods = list(seq)
    return [(mods[i], _ACT_FNS[type(mods[i + 1])]) for i in range(0, len(mods), 2)]


def _run(plan: list, x: torch.Tensor) -> torch.Tensor:
    for lin, act in plan:
        x = act(F.linear(x, lin.weight, lin.bias))
    return x


def _relu_np(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


_NP_ACTS = {torch.relu: _relu_np, torch.tanh: np.tanh}


def _np_plan(plan: list) -> list:
    """An mlp()'s plan as numpy: [(W, b, activation)], views of the parameters."""
    return [_np_layer(lin, act) for lin, act in plan]


def _np_layer(lin: nn.Linear, act=None) -> tuple:
    return lin.weight.detach().numpy(), lin.bias.detach().numpy(), _NP_ACTS.get(act)


def _run_rows(plan: list, x: np.ndarray) -> np.ndarray:
    """The layers on activations ``[n, features]``: x @ W^T + b."""
    for w, b, act in plan:
        x = x @ w.T + b
        if act is not None:
            x = act(x)
    return x


def _run_cols(plan: list, xt: np.ndarray) -> np.ndarray:
    """The same on *transposed* activations ``[features, n]``: W @ x^T + b, each weight in its own
    row-major layout, which OpenBLAS multiplies about 1.3x faster than x @ W^T at 2-4 rows (the
    MuJoCo case) and slower from about 16 (``_COLUMNS_UP_TO``). The same numbers either way."""
    for w, b, act in plan:
        xt = w @ xt + b[:, None]
        if act is not None:
            xt = act(xt)
    return xt


_COLUMNS_UP_TO = 8  # observations per forward up to which the numpy forward runs _run_cols


def set_spaces(net: nn.Module, obs_dim: int, action_space: gym.Space) -> int:
    """What every network tells the storage: ``discrete``, ``obs_dim``, ``act_dim`` (the policy
    head's width per action dimension or class) and ``act_shape`` (one action as stored)."""
    net.discrete = isinstance(action_space, gym.spaces.Discrete)
    net.act_dim = int(action_space.n) if net.discrete else int(np.prod(action_space.shape))
    net.obs_dim, net.act_shape = obs_dim, () if net.discrete else tuple(action_space.shape)
    return net.act_dim


def init_orthogonal(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)


class ActorCritic(nn.Module):
    """pi(a|s) and V(s). ``forward(obs) -> (distribution parameters, value)``.

    It shares the recurrent network's interface with an empty state (``state_size = 0``), so the
    acting loop, evaluation and play are one code path for both.
    """

    recurrent = False
    state_size = 0

    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        act_dim = set_spaces(self, obs_dim, action_space)
        self.pi_torso = mlp(obs_dim, cfg.hidden, cfg.activation)
        self.v_torso = None if cfg.shared else mlp(obs_dim, cfg.hidden, cfg.activation)
        width = self.feature_dim = cfg.hidden[-1]
        self.pi_head = nn.Linear(width, act_dim)
        self.v_head = nn.Linear(width, 1)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        self._pi_plan = _plan(self.pi_torso)
        self._v_plan = None if self.v_torso is None else _plan(self.v_torso)
        if cfg.ortho_init:
            init_orthogonal(self.pi_torso, math.sqrt(2))
            if self.v_torso is not None:
                init_orthogonal(self.v_torso, math.sqrt(2))
            init_orthogonal(self.pi_head, 0.01)
            init_orthogonal(self.v_head, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pi_out, hv = self.features(obs)
        return pi_out, F.linear(hv, self.v_head.weight, self.v_head.bias).squeeze(-1)

    def features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, the critic's torso output): what ACER's Q heads read."""
        h = _run(self._pi_plan, obs)
        hv = h if self._v_plan is None else _run(self._v_plan, obs)
        return F.linear(h, self.pi_head.weight, self.pi_head.bias), hv

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        h = _run(self._pi_plan if self._v_plan is None else self._v_plan, obs)
        return F.linear(h, self.v_head.weight, self.v_head.bias).squeeze(-1)

    def numpy_forward(self):
        """``forward`` for acting, on numpy observations ``[n, D]`` float32 -> (distribution
        parameters ``[n, A]``, values ``[n]``) as numpy float32: the same layers through numpy's
        BLAS, without torch's per-operation dispatch -- at the acting loop's batches of 1-16
        observations a third of torch's time (issue 17). It reads most weights through numpy views
        of the parameters, but the first layers of separate actor and critic torsos are copied side
        by side (one matmul for both): build a new one after the parameters change (``collect``
        builds one per rollout). Equal to ``forward`` to float32 rounding (tested)."""
        pi, v = _np_plan(self._pi_plan), None if self._v_plan is None else _np_plan(self._v_plan)
        head_pi, head_v = [_np_layer(self.pi_head)], [_np_layer(self.v_head)]
        if v is None:
            def forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if obs.shape[0] > _COLUMNS_UP_TO:
                    h = _run_rows(pi, obs)
                    return _run_rows(head_pi, h), _run_rows(head_v, h)[:, 0]
                ht = _run_cols(pi, obs.T)
                return _run_cols(head_pi, ht).T, _run_cols(head_v, ht)[0]

            return forward
        # the two torsos' first layers read the same observations: one layer of both stacked
        # (a copy of those weights, taken now: the reason to build one per rollout)
        (w_pi, b_pi, act), (w_v, b_v, _) = pi[0], v[0]
        width = w_pi.shape[0]
        first = [(np.concatenate([w_pi, w_v]), np.concatenate([b_pi, b_v]), act)]
        pi, v = pi[1:], v[1:]

        def forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if obs.shape[0] > _COLUMNS_UP_TO:
                h0 = _run_rows(first, obs)
                h, hv = _run_rows(pi, h0[:, :width]), _run_rows(v, h0[:, width:])
                return _run_rows(head_pi, h), _run_rows(head_v, hv)[:, 0]
            h0t = _run_cols(first, obs.T)
            ht, hvt = _run_cols(pi, h0t[:width]), _run_cols(v, h0t[width:])
            return _run_cols(head_pi, ht).T, _run_cols(head_v, hvt)[0]

        return forward

    # -- the recurrent interface, with no state ---------------------------------------------
    def initial_state(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 0)

    def step(self, obs: torch.Tensor, state: torch.Tensor):
        pi_out, value = self(obs)
        return pi_out, value, state

    def value_step(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.value(obs)

    def forward_batch(self, batch):
        """(distribution parameters, values) for a training batch (flat samples)."""
        return self(batch.obs)

    def dist(self, pi_out: torch.Tensor):
        if self.discrete:
            return Categorical(pi_out)
        return DiagGaussian(pi_out, self.log_std)
