"""The recurrent actor-critic (``--net lstm``): encoder MLP -> LSTM -> per-head MLP -> heads.

The recurrent state of a batch of envs is one tensor ``[B, state_size]`` (h and c of every
layer, of the shared LSTM or of the actor's and the critic's), so the acting loop and the
rollout store it like any other per-env quantity. ``step`` advances it by one observation;
``seq`` runs whole ``[L, B]`` sequences from their initial states in one LSTM call (torch's
C++ loop), which is how training replays stored sequences (truncated BPTT). Both compute the
same function: acting step by step and training over the sequence agree to float rounding.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contrl.config import NetConfig
from contrl.nets.actor_critic import (ActorCritic, _np_layer, _np_plan, _plan, _run, _run_rows, init_orthogonal, mlp,
                                      set_spaces)


class RecurrentActorCritic(nn.Module):
    recurrent = True

    def __init__(self, obs_dim: int, action_space: gym.Space, cfg: NetConfig):
        super().__init__()
        act_dim = set_spaces(self, obs_dim, action_space)
        H, layers = cfg.lstm_hidden, cfg.lstm_layers
        enc_out = cfg.hidden[-1] if cfg.hidden else obs_dim
        self.encoder = mlp(obs_dim, cfg.hidden, cfg.activation)
        self.lstm = nn.LSTM(enc_out, H, layers)
        self.v_encoder = mlp(obs_dim, cfg.hidden, cfg.activation) if cfg.critic_lstm else None
        self.v_lstm = nn.LSTM(enc_out, H, layers) if cfg.critic_lstm else None
        self.pi_post = mlp(H, cfg.post_hidden, cfg.activation)
        self.v_post = mlp(H, cfg.post_hidden, cfg.activation)
        width = self.feature_dim = cfg.post_hidden[-1] if cfg.post_hidden else H
        self.pi_head = nn.Linear(width, act_dim)
        self.v_head = nn.Linear(width, 1)
        self.log_std = None if self.discrete else nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))
        self.H, self.layers, self.n_lstm = H, layers, 2 if cfg.critic_lstm else 1
        self.state_size = self.n_lstm * 2 * layers * H
        self._plans = {name: _plan(getattr(self, name)) for name in ("encoder", "v_encoder", "pi_post", "v_post")
                       if getattr(self, name) is not None}
        if cfg.ortho_init:
            for m in (self.encoder, self.v_encoder, self.pi_post, self.v_post):
                if m is not None:
                    init_orthogonal(m, math.sqrt(2))
            for lstm in (self.lstm, self.v_lstm):
                if lstm is not None:
                    for name, p in lstm.named_parameters():
                        nn.init.orthogonal_(p, 1.0) if name.startswith("weight") else nn.init.zeros_(p)
            init_orthogonal(self.pi_head, 0.01)
            init_orthogonal(self.v_head, 1.0)

    # -- state layout: [B, n_lstm * 2 * layers * H] <-> [(h, c)] with h, c [layers, B, H] -------
    def initial_state(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.state_size)

    def _unpack(self, state: torch.Tensor) -> list:
        x = state.view(state.shape[0], self.n_lstm, 2, self.layers, self.H).permute(1, 2, 3, 0, 4)
        return [(x[i, 0].contiguous(), x[i, 1].contiguous()) for i in range(self.n_lstm)]

    @staticmethod
    def _pack(hcs: list) -> torch.Tensor:
        x = torch.stack([torch.stack(hc) for hc in hcs])  # [n_lstm, 2, layers, B, H]
        return x.permute(3, 0, 1, 2, 4).reshape(x.shape[3], -1)

    # -- forward ------------------------------------------------------------------------------
    def _forward(self, obs: torch.Tensor, state: torch.Tensor, lstm_call):
        pi_out, hv, new_state = self._features(obs, state, lstm_call)
        return pi_out, F.linear(hv, self.v_head.weight, self.v_head.bias).squeeze(-1), new_state

    def _features(self, obs: torch.Tensor, state: torch.Tensor, lstm_call):
        """(distribution parameters, the critic's features before its head, next state)."""
        hcs = self._unpack(state)
        out, hc = lstm_call(self.lstm, _run(self._plans["encoder"], obs), hcs[0])
        new = [hc]
        if self.v_lstm is not None:
            v_out, v_hc = lstm_call(self.v_lstm, _run(self._plans["v_encoder"], obs), hcs[1])
            new.append(v_hc)
        else:
            v_out = out
        pi_out = F.linear(_run(self._plans["pi_post"], out), self.pi_head.weight, self.pi_head.bias)
        return pi_out, _run(self._plans["v_post"], v_out), self._pack(new)

    def seq_features(self, obs: torch.Tensor, state: torch.Tensor):
        """``seq`` with the critic's features in place of V (ACER's Q heads read them)."""
        return self._features(obs, state, lambda lstm, x, hc: lstm(x, hc))

    def step_features(self, obs: torch.Tensor, state: torch.Tensor):
        return self._features(obs, state, self._cell)

    def seq(self, obs: torch.Tensor, state: torch.Tensor):
        """obs ``[L, B, D]`` from initial states ``[B, S]`` -> (pi_out [L, B, A], V [L, B], final state)."""
        return self._forward(obs, state, lambda lstm, x, hc: lstm(x, hc))

    @staticmethod
    def _cell(lstm: nn.LSTM, x: torch.Tensor, hc: tuple) -> tuple:
        """One time step of ``lstm`` with ``torch.lstm_cell`` per layer: the same arithmetic as
        the sequence call, 2-3x faster for one step on this CPU (no oneDNN set-up)."""
        hs, cs = [], []
        for layer in range(lstm.num_layers):
            w = [getattr(lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x, c = torch.lstm_cell(x, (hc[0][layer], hc[1][layer]), *w)
            hs.append(x)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))

    def step(self, obs: torch.Tensor, state: torch.Tensor):
        """One step of a batch: obs ``[N, D]``, state ``[N, S]`` -> (pi_out, V, next state)."""
        return self._forward(obs, state, self._cell)

    def value_step(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """V(obs) given the state before it (bootstrap values), without the policy branch."""
        hcs = self._unpack(state)
        if self.v_lstm is not None:
            out, _ = self._cell(self.v_lstm, _run(self._plans["v_encoder"], obs), hcs[1])
        else:
            out, _ = self._cell(self.lstm, _run(self._plans["encoder"], obs), hcs[0])
        return F.linear(_run(self._plans["v_post"], out), self.v_head.weight, self.v_head.bias).squeeze(-1)

    def numpy_forward(self, critic_head: nn.Linear | None = None):
        """``step`` for acting, in numpy (issue 17): ``forward(obs [n, D], state [n, S]) ->
        (distribution parameters [n, A], values [n], next state [n, S])``, all numpy float32 --
        the same layers and LSTM cells through numpy's BLAS, without torch's per-operation dispatch
        (at the acting loop's 1-16 rows most of a torch step's time). Each LSTM layer's two
        products are one (its input and its h side by side, against ``[W_ih W_hh]^T``) and its gates
        are reordered (i, f, o | g) so the three sigmoids are one: copies of those weights, taken
        now, so build a new one after the parameters change (``collect`` builds one per rollout).
        Equal to ``step`` to float32 rounding (tested). ``critic_head``: another layer on the
        critic's features in place of the value head (ACER's Q head), whose whole output
        ``[n, C]`` then comes back instead of the values."""
        H, layers, n_lstm = self.H, self.layers, self.n_lstm
        plans = {name: _np_plan(plan) for name, plan in self._plans.items()}
        encoders = [plans["encoder"]] + ([plans["v_encoder"]] if n_lstm == 2 else [])
        cells = [_np_lstm(self.lstm)] + ([_np_lstm(self.v_lstm)] if n_lstm == 2 else [])
        pi_post = plans["pi_post"] + [_np_layer(self.pi_head)]
        v_post = plans["v_post"] + [_np_layer(critic_head or self.v_head)]
        col = 0 if critic_head is None else slice(None)  # the value column, or all of them

        def forward(obs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            n = obs.shape[0]
            s = state.reshape(n, n_lstm, 2, layers, H)
            new = np.empty_like(s)
            outs = []
            for i in range(n_lstm):
                x = _run_rows(encoders[i], obs)
                for layer, (w, b) in enumerate(cells[i]):
                    gates = np.concatenate([x, s[:, i, 0, layer]], 1) @ w + b
                    sig = np.multiply(gates[:, :3 * H], 0.5)  # i, f, o: sigmoid(z) = (1 + tanh(z / 2)) / 2,
                    np.tanh(sig, out=sig)  # which no z overflows
                    sig *= 0.5
                    sig += 0.5
                    c = np.multiply(sig[:, H:2 * H], s[:, i, 1, layer], out=new[:, i, 1, layer])
                    c += sig[:, :H] * np.tanh(gates[:, 3 * H:])
                    x = np.multiply(sig[:, 2 * H:], np.tanh(c), out=new[:, i, 0, layer])
                outs.append(x)
            return _run_rows(pi_post, outs[0]), _run_rows(v_post, outs[-1])[:, col], new.reshape(n, -1)

        return forward

    def forward_batch(self, batch):
        """(distribution parameters, values) at the valid steps of a padded sequence batch, in the
        order of ``batch.mask`` (time-major), matching the batch's flat fields."""
        pi_out, v, _ = self.seq(batch.obs, batch.state0)
        return pi_out[batch.mask], v[batch.mask]

    dist = ActorCritic.dist  # the same heads: categorical or diagonal Gaussian


def _np_lstm(lstm: nn.LSTM) -> list[tuple[np.ndarray, np.ndarray]]:
    """An LSTM's layers for ``numpy_forward``: per layer ``[W_ih W_hh]^T`` ``[in + H, 4H]`` (a
    contiguous copy: numpy multiplies it ~1.4x faster than a transposed view) and ``b_ih + b_hh``,
    with torch's gate order (i, f, g, o) rearranged to (i, f, o, g)."""
    H = lstm.hidden_size
    order = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]
    out = []
    for layer in range(lstm.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}").detach().numpy()
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        out.append((np.ascontiguousarray(np.concatenate([w_ih, w_hh], 1)[order].T), (b_ih + b_hh)[order]))
    return out
