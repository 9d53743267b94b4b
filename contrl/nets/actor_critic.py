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


def _run_keep(plan: list, x: torch.Tensor) -> list[torch.Tensor]:
    """``_run`` without autograd, keeping every layer's output: [x, h1, ..., hL] (for ``_back``)."""
    hs = [x]
    for lin, act in plan:
        x = F.linear(x, lin.weight, lin.bias)
        hs.append(_ACT_INPLACE[act](x))
    return hs


def _grad_buffer(p: torch.Tensor) -> torch.Tensor:
    """``p.grad``, made if there is none: the hand-written backward writes into the same buffers
    every minibatch (a new 256x256 gradient per minibatch made its matmul ~1.5x slower, measured)."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad


def _linear_back(lin: nn.Linear, g: torch.Tensor, x: torch.Tensor, need_input: bool = True):
    """The gradients of y = x W^T + b given dL/dy ``g``: written into ``lin``'s ``.grad``;
    returns dL/dx (``need_input``) -- what autograd's AddmmBackward computes, by the same ops."""
    torch.mm(g.t(), x, out=_grad_buffer(lin.weight))
    torch.sum(g, 0, out=_grad_buffer(lin.bias))
    return torch.mm(g, lin.weight) if need_input else None


def _back(plan: list, hs: list[torch.Tensor], g: torch.Tensor, need_input: bool = False):
    """Back through an mlp() run by ``_run_keep`` (``hs``), dL/d(its output) ``g``: every layer's
    weight and bias gradient into its ``.grad``; returns dL/d(its input) if ``need_input``."""
    for k in range(len(plan) - 1, -1, -1):
        lin, act = plan[k]
        g = _ACT_BACKWARD[act](g, hs[k + 1])
        g = _linear_back(lin, g, hs[k], need_input=need_input or k > 0)
    return g


_ACT_INPLACE = {torch.relu: torch.relu_, torch.tanh: torch.tanh_}
# dL/dz from dL/dh and h = act(z): the kernels autograd runs for ReLU and tanh (by their output)
_ACT_BACKWARD = {torch.relu: lambda g, h: torch.ops.aten.threshold_backward(g, h, 0),
                 torch.tanh: torch.ops.aten.tanh_backward}


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
    hand_backward = True  # forward_cached / backward_into: PPO's minibatch without autograd

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

    def numpy_forward(self, critic_head: nn.Linear | None = None):
        """``forward`` for acting, on numpy observations ``[n, D]`` float32 -> (distribution
        parameters ``[n, A]``, values ``[n]``) as numpy float32: the same layers through numpy's
        BLAS, without torch's per-operation dispatch -- at the acting loop's batches of 1-16
        observations a third of torch's time (issue 17). It reads most weights through numpy views
        of the parameters, but the first layers of separate actor and critic torsos are copied side
        by side (one matmul for both): build a new one after the parameters change (``collect``
        builds one per rollout). Equal to ``forward`` to float32 rounding (tested). ``critic_head``:
        another layer on the critic's features in place of the value head (ACER's Q head), whose
        whole output ``[n, C]`` then comes back instead of the values."""
        pi, v = _np_plan(self._pi_plan), None if self._v_plan is None else _np_plan(self._v_plan)
        head_pi, head_v = [_np_layer(self.pi_head)], [_np_layer(critic_head or self.v_head)]
        col = 0 if critic_head is None else slice(None)  # the value column, or all of them
        if v is None:
            def forward(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if obs.shape[0] > _COLUMNS_UP_TO:
                    h = _run_rows(pi, obs)
                    return _run_rows(head_pi, h), _run_rows(head_v, h)[:, col]
                ht = _run_cols(pi, obs.T)
                return _run_cols(head_pi, ht).T, _run_cols(head_v, ht)[col].T

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
                return _run_rows(head_pi, h), _run_rows(head_v, hv)[:, col]
            h0t = _run_cols(first, obs.T)
            ht, hvt = _run_cols(pi, h0t[:width]), _run_cols(v, h0t[width:])
            return _run_cols(head_pi, ht).T, _run_cols(head_v, hvt)[col].T

        return forward

    # -- forward and backward by hand (issue 17) ---------------------------------------------
    # A 64-sample minibatch of these small networks spends most of its time in autograd's
    # per-node overhead (~80 nodes, several us each), not in arithmetic: a rule that knows its
    # loss's gradient with respect to (distribution parameters, values, log-std) runs the
    # network's forward keeping each layer's output and writes every parameter's gradient here,
    # with the same matmuls autograd would run (tests/test_ppo.py compares with autograd).
    def forward_cached(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``forward`` without autograd: (distribution parameters, values, what ``backward_into`` needs)."""
        pi_out, hv, cache = self.features_cached(obs)
        with torch.no_grad():
            values = F.linear(hv, self.v_head.weight, self.v_head.bias).squeeze(-1)
        return pi_out, values, cache

    def backward_into(self, cache: tuple, g_pi: torch.Tensor, g_values: torch.Tensor,
                      g_log_std: torch.Tensor | None = None) -> None:
        """Every parameter's ``.grad`` (overwritten, not accumulated) from dL/d(distribution
        parameters) ``[B, A]``, dL/d(values) ``[B]`` and, for a Gaussian head, dL/d(log-std) ``[A]``."""
        with torch.no_grad():
            g_hv = _linear_back(self.v_head, g_values.unsqueeze(1), cache[1][-1])
        self.features_backward(cache, g_pi, g_hv, g_log_std)

    def features_cached(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``features`` without autograd: (distribution parameters, critic features, what
        ``features_backward`` needs: every torso layer's output)."""
        with torch.no_grad():
            hs = _run_keep(self._pi_plan, obs)
            hvs = hs if self._v_plan is None else _run_keep(self._v_plan, obs)
            pi_out = F.linear(hs[-1], self.pi_head.weight, self.pi_head.bias)
        return pi_out, hvs[-1], (hs, hvs)

    def features_backward(self, cache: tuple, g_pi: torch.Tensor, g_hv: torch.Tensor,
                          g_log_std: torch.Tensor | None = None) -> None:
        """The torsos' and the policy head's ``.grad`` (and log-std's) from dL/d(distribution
        parameters) ``[B, A]`` and dL/d(critic features) ``[B, width]`` (what the heads on them
        pass back). ``cache`` may keep only the first B rows of a ``features_cached`` (each
        layer's output sliced ``[:B]``)."""
        hs, hvs = cache
        with torch.no_grad():
            g = _linear_back(self.pi_head, g_pi, hs[-1])  # an mlp() torso has at least one layer
            if self._v_plan is None:  # one torso: both heads' gradients flow into it
                _back(self._pi_plan, hs, g.add_(g_hv))
            else:
                _back(self._pi_plan, hs, g)
                _back(self._v_plan, hvs, g_hv)
            if self.log_std is not None:
                self.log_std.grad = g_log_std

    def policy_out(self, obs: torch.Tensor) -> torch.Tensor:
        """The distribution parameters alone (the actor's torso and head; no critic)."""
        return F.linear(_run(self._pi_plan, obs), self.pi_head.weight, self.pi_head.bias)

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
