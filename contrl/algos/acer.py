"""ACER update rule (Wang et al. 2016, "Sample Efficient Actor-Critic with Experience Replay").

Per collected segment: one on-policy update on it, then it goes into the replay memory and,
once ``replay_start`` transitions are stored, Poisson(``replay_ratio``) off-policy updates on
segments sampled from it. Each update (``learn``) reads top to bottom:

1. One forward of the network over the segment (``SegmentPlan``): its k steps and, for every
   episode piece, the observation to bootstrap from; pi, Q and V. With an LSTM the pieces are
   sequences from their stored initial states, padded into one call.
2. Importance weights rho = pi(a|s) / mu(a|s) against the stored behaviour policy mu.
3. Retrace targets Q_ret, computed backwards with truncated weights c_t = min(1, rho_t)
   (continuous: min(1, rho_t^(1/d))); a terminated step bootstraps nothing, a truncated one
   V(final observation), the segment's end V(next observation).
4. The policy gradient with truncated importance sampling min(c, rho) plus the bias
   correction (discrete: the exact sum over actions; continuous: one action sampled from pi),
   and the entropy bonus -- taken with respect to the distribution's parameters phi (logits;
   mean and log-std), and then
5. projected onto the trust region around the average policy network:
   z = g - max(0, (k.g - delta) / |k|^2) k, k = grad_phi KL(pi_avg || pi), per sample;
   backpropagated from phi into the network.
6. The critic: (Q_ret - Q(s, a))^2; continuous also the SDN value target
   V + min(1, rho)(Q_ret - Q~(s, a)).
7. Gradient-norm clipping, the optimiser step, then the average network moves towards the
   network: theta_avg = avg_decay * theta_avg + (1 - avg_decay) * theta.
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
from torch import nn

from contrl.algos.optim import make_optimizer
from contrl.config import ACERConfig
from contrl.nets.distributions import Categorical, DiagGaussian
from contrl.storage.replay import ReplayBuffer, Segment
from contrl.storage.rollout import Rollout

MAX_LOG_RATIO = 30.0  # exp(30) ~ 1e13: bounds rho without changing min(c, rho) for any sane c


def retrace(rewards: torch.Tensor, q_a: torch.Tensor, values: torch.Tensor, c: torch.Tensor,
            terminated: torch.Tensor, truncated: torch.Tensor, v_final: torch.Tensor, v_last: torch.Tensor,
            gamma: float) -> torch.Tensor:
    """Retrace targets over a ``[k, B]`` segment, backwards from ``v_last`` = V(s_k).

    ``Q_ret_t = r_t + gamma * next_t`` where ``next_t`` is 0 if the episode terminated at t,
    ``v_final_t`` = V(final observation) if it was truncated at t, and otherwise
    ``c_{t+1} (Q_ret_{t+1} - Q(s_{t+1}, a_{t+1})) + V(s_{t+1})`` (``v_last`` after the last step).
    """
    out = torch.empty_like(rewards)
    carry = v_last
    for t in range(rewards.shape[0] - 1, -1, -1):
        nxt = torch.where(terminated[t], torch.zeros_like(carry), torch.where(truncated[t], v_final[t], carry))
        out[t] = rewards[t] + gamma * nxt
        carry = c[t] * (out[t] - q_a[t]) + values[t]
    return out


def trust_region(g: torch.Tensor, k: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row projection of ``g`` onto the half-space ``k.z <= delta`` (Wang et al. eq. 12):
    ``z = g - max(0, (k.g - delta) / |k|^2) k``. Returns (z, the scale applied per row)."""
    scale = ((k * g).sum(-1) - delta).div((k * k).sum(-1).clamp_min(1e-12)).clamp_min(0.0)
    return g - scale.unsqueeze(-1) * k, scale


class SegmentPlan:
    """How a ``[k, B]`` segment goes through a network in one call, bootstrap inputs included.

    Every episode piece of a column (cut where an episode ends) gets one bootstrap input after its
    last step: the final observation where the episode ended there (a truncation bootstraps
    V(final obs); a termination's value is never used), else the observation after the segment.
    MLP: the k*B observations and the bootstrap inputs are one flat batch. LSTM: each piece is a
    sequence (its steps, then its bootstrap input) from the column's stored initial state, or
    from zero after an episode start, so the bootstrap input is seen with the state that saw the
    piece's last step; the pieces are padded to ``[L, P]`` and run as one LSTM call.
    ``steps`` picks the k*B step outputs in time-major order, ``boot`` the bootstrap outputs.
    """

    def __init__(self, seg: Segment, recurrent: bool):
        k, B = seg.rewards.shape
        D = seg.obs.shape[-1]
        done = seg.terminated | seg.truncated
        self.k, self.B, self.recurrent = k, B, recurrent
        # the bootstrap points: every done step, and the last step of each column that did not end
        last_open = ~done[k - 1]
        t_b = torch.cat([done.nonzero(), torch.stack([torch.full((int(last_open.sum()),), k - 1),
                                                       last_open.nonzero().squeeze(1)], 1)])
        boot_obs = torch.cat([seg.final_obs[done], seg.obs[k][last_open]])
        self.boot_t, self.boot_b = t_b[:, 0], t_b[:, 1]
        self.ended = torch.cat([torch.ones(int(done.sum()), dtype=torch.bool), torch.zeros(int(last_open.sum()),
                                                                                             dtype=torch.bool)])
        n = k * B
        if not recurrent:
            self.x = torch.cat([seg.obs[:k].reshape(n, D), boot_obs])
            self.steps = torch.arange(n)
            self.boot = n + torch.arange(boot_obs.shape[0])
            return
        # pieces in env-major order (column b's step t at b * k + t), one per bootstrap point
        start = torch.zeros(B, k, dtype=torch.bool)
        start[:, 0] = True
        start[:, 1:] = done.T[:, :-1]
        pos = start.flatten().nonzero().squeeze(1)
        P = pos.shape[0]
        m = torch.diff(pos, append=torch.tensor([B * k]))  # steps per piece
        col, t0 = pos // k, pos % k
        end = t0 + m - 1
        # this piece's bootstrap point: match (end, col) against the list above
        key = self.boot_t * B + self.boot_b
        order = torch.argsort(key)
        which = order[torch.searchsorted(key[order], end * B + col)]
        table = torch.cat([seg.obs[:k].transpose(0, 1).reshape(n, D), boot_obs[which]])
        L = int(m.max()) + 1
        j = torch.arange(L).unsqueeze(1)
        idx = torch.where(j < m, pos + j, n + torch.arange(P))  # after the steps: the bootstrap row
        self.x = table[idx]  # [L, P, D]; padding repeats the bootstrap row
        s0 = seg.state0[col]
        self.state0 = torch.where((t0 == 0).unsqueeze(1), s0, torch.zeros_like(s0))
        piece = torch.cumsum(start.flatten(), 0) - 1  # the piece of each env-major step
        row = (torch.arange(n) - pos[piece]) * P + piece  # its row in the flattened [L * P] outputs
        tm_to_em = (torch.arange(k).unsqueeze(1) + torch.arange(B).unsqueeze(0) * k).reshape(n)
        self.steps = row[tm_to_em]
        boot_rows = torch.empty(P, dtype=torch.long)
        boot_rows[which] = m * P + torch.arange(P)
        self.boot = boot_rows

    def run(self, net) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution parameters, critic features) of ``net`` at every row of the plan."""
        if not self.recurrent:
            return net.features(self.x)
        pi, hv = net.seq_features(self.x, self.state0)
        return pi.reshape(-1, pi.shape[-1]), hv.reshape(-1, hv.shape[-1])

    def bootstrap_values(self, v_boot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V(s_k) per column [B], V(final obs) [k, B] where an episode ended) from the values at
        the bootstrap rows; zero where there is nothing to bootstrap."""
        v_last = torch.zeros(self.B)
        v_final = torch.zeros(self.k, self.B)
        v_final[self.boot_t[self.ended], self.boot_b[self.ended]] = v_boot[self.ended]
        v_last[self.boot_b[~self.ended]] = v_boot[~self.ended]
        return v_last, v_final


class ACER:
    stores_behaviour = True  # the runner keeps mu, final observations and terminated flags

    def __init__(self, model: nn.Module, cfg: ACERConfig, n_envs: int, obs_dim: int, act_shape: tuple,
                 mu_dim: int, replay: bool = True, apply_to: Optional[Iterable[torch.Tensor]] = None,
                 shared_state: Optional[dict] = None, avg: Optional[nn.Module] = None):
        """``replay=False``: no memory (async ACER's coordinator). Async ACER's workers pass
        ``apply_to`` (the global parameters their gradients step), ``shared_state`` (the shared
        optimiser's statistics) and ``avg`` (the shared average network)."""
        self.model, self.cfg = model, cfg
        self.params = list(model.parameters())
        self.targets = list(apply_to) if apply_to is not None else self.params
        self.optimizer = make_optimizer(cfg.optimizer, self.targets, cfg.lr, cfg.alpha, cfg.eps, state=shared_state)
        self.avg = avg
        if cfg.trust_region and avg is None:
            self.avg = copy.deepcopy(model)
            for p in self.avg.parameters():
                p.requires_grad_(False)
        self.replay = None
        if cfg.replay_ratio > 0 and replay:
            self.replay = ReplayBuffer(cfg.buffer_size, cfg.n_steps, n_envs, obs_dim, act_shape, mu_dim,
                                       model.state_size)
        self.n_envs = n_envs
        self.q_opc = cfg.q_opc if cfg.q_opc is not None else not model.discrete

    def set_progress(self, fraction_done: float) -> float:
        """Linear learning-rate annealing; returns the lr in force."""
        lr = self.cfg.lr * (1.0 - fraction_done) if self.cfg.anneal_lr else self.cfg.lr
        self.optimizer.lr = lr
        return lr

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict:
        """The on-policy update on the new segment, then Poisson(replay_ratio) replayed ones."""
        seg = Segment.from_rollout(rollout)
        stats = [self.learn(seg, generator)]
        n_replay = self.store(seg, generator)
        for _ in range(n_replay):
            stats.append(self.learn(self.replay.sample(self.n_envs, generator), generator))
        out = {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}
        out["replay_updates"] = n_replay
        return out

    def store(self, seg: Segment, generator: torch.Generator) -> int:
        """Put a new segment in the memory; returns how many replayed updates follow it:
        Poisson(replay_ratio) once ``replay_start`` transitions are stored, else none."""
        if self.replay is None:
            return 0
        self.replay.add(seg)
        if self.replay.transitions < self.cfg.replay_start:
            return 0
        rate = torch.tensor(float(self.cfg.replay_ratio), dtype=torch.float64)
        return int(torch.poisson(rate, generator=generator))

    # -- one update on one [k, B] segment ------------------------------------------------------
    def learn(self, seg: Segment, generator: torch.Generator) -> dict:
        stats = self.gradients(seg, generator)
        if self.targets is not self.params:  # async: the local gradients step the global model
            for target, p in zip(self.targets, self.params):
                target.grad = p.grad
        self.step()
        return stats

    def gradients(self, seg: Segment, generator: torch.Generator) -> dict:
        """The clipped gradients of ACER's loss on ``seg`` into the model's ``.grad`` (no step; the
        Ray runner's async ACER workers send them to the learner)."""
        if self.targets is not self.params:  # async: every update starts from the global weights
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.targets)
        loss, stats = self.loss(seg, generator)
        for p in self.params:
            p.grad = None
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)
        return stats

    def step(self) -> None:
        """7. The optimiser steps the gradients in ``targets``' ``.grad``, then the average network follows."""
        self.optimizer.step()
        if self.avg is not None:
            with torch.no_grad():
                avg_params = list(self.avg.parameters())
                torch._foreach_mul_(avg_params, self.cfg.avg_decay)
                torch._foreach_add_(avg_params, self.targets, alpha=1.0 - self.cfg.avg_decay)

    def loss(self, seg: Segment, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Steps 1-6: a loss whose gradient is ACER's (the policy's part already projected)."""
        cfg, model = self.cfg, self.model
        k, B = seg.rewards.shape
        n = k * B
        # 1. one forward: the k steps and, per piece of episode, the observation to bootstrap from
        plan = SegmentPlan(seg, model.recurrent)
        pi_all, hv_all = plan.run(model)
        pi_out, hv = pi_all[plan.steps], hv_all[plan.steps]
        with torch.no_grad():
            v_last, v_final = plan.bootstrap_values(model.v(pi_all[plan.boot], hv_all[plan.boot]))
        actions = seg.actions.reshape((n,) + seg.actions.shape[2:])

        # the policy as a function of its own parameters phi, so its gradient can be projected
        phi = [pi_out.detach().requires_grad_()]
        if not model.discrete:
            phi.append(model.log_std.detach().expand_as(pi_out).clone().requires_grad_())
        dist = Categorical(phi[0]) if model.discrete else DiagGaussian(*phi)
        mu = (Categorical if model.discrete else DiagGaussian).from_params(seg.mu.reshape(n, -1))

        # 2.-3. importance weights, critic values, Retrace targets
        logp = dist.log_prob(actions)
        log_rho = (logp.detach() - mu.log_prob(actions)).clamp(max=MAX_LOG_RATIO)
        rho = log_rho.exp()
        if model.discrete:
            q = model.q_values(hv)
            q_a = q.gather(1, actions.long().unsqueeze(1)).squeeze(1)
            values = (dist.probs.detach() * q.detach()).sum(-1)
            c_trace = rho.clamp(max=1.0)
        else:
            values_g = model.v(pi_out, hv)
            values = values_g.detach()
            std = phi[1].detach().exp()
            mean = phi[0].detach()
            u = mean + std * torch.randn((cfg.sdn_samples,) + mean.shape, generator=generator)
            adv_u = model.advantage(hv, u).mean(0)
            q_a = values_g + model.advantage(hv, actions) - adv_u  # Q~(s, a), the SDN
            c_trace = (log_rho / mean.shape[-1]).exp().clamp(max=1.0)
        view = lambda x: x.reshape(k, B)  # noqa: E731
        with torch.no_grad():
            q_ret = retrace(seg.rewards, view(q_a.detach()), view(values), view(c_trace),
                            seg.terminated, seg.truncated, view(v_final), v_last, cfg.gamma).reshape(n)
            q_pg = q_ret
            if self.q_opc:  # Q_opc: Retrace with every c = 1, for the policy gradient
                q_pg = retrace(seg.rewards, view(q_a.detach()), view(values), torch.ones(k, B),
                               seg.terminated, seg.truncated, view(v_final), v_last, cfg.gamma).reshape(n)

        # 4. truncated importance sampling + bias correction + entropy, per sample, w.r.t. phi
        objective = rho.clamp(max=cfg.c) * (q_pg - values) * logp
        if model.discrete:
            rho_all = dist.probs.detach() / mu.probs.clamp_min(1e-30)
            bc = (1.0 - cfg.c / rho_all).clamp_min(0.0) * dist.probs.detach() * (q.detach() - values.unsqueeze(1))
            objective = objective + (bc * dist.logits).sum(-1)
        else:
            a_new = mean + std * torch.randn(mean.shape, generator=generator)
            logp_new = dist.log_prob(a_new)
            rho_new = (logp_new.detach() - mu.log_prob(a_new)).clamp(max=MAX_LOG_RATIO).exp()
            with torch.no_grad():
                q_new = values + model.advantage(hv, a_new) - adv_u
            objective = objective + (1.0 - cfg.c / rho_new).clamp_min(0.0) * (q_new - values) * logp_new
        entropy = dist.entropy()
        objective = objective + cfg.ent_coef * entropy
        grads = torch.autograd.grad(objective.sum(), phi, retain_graph=self.avg is not None)
        g = torch.cat(grads, -1)

        # 5. the trust region around the average policy
        kl_mean, tr_active = 0.0, 0.0
        if self.avg is not None:
            with torch.no_grad():
                avg_pi = plan.run(self.avg)[0][plan.steps]
                avg_dist = Categorical(avg_pi) if model.discrete else DiagGaussian(avg_pi, self.avg.log_std)
            kl = avg_dist.kl(dist)
            kgrad = torch.cat(torch.autograd.grad(kl.sum(), phi), -1)
            g, scale = trust_region(g, kgrad, cfg.delta)
            kl_mean, tr_active = kl.mean().item(), (scale > 0).float().mean().item()

        # 6. critic losses; the policy's projected gradient enters through phi's network outputs
        q_loss = (q_ret - q_a).pow(2).mean()
        if not model.discrete:
            v_target = values + rho.clamp(max=1.0) * (q_ret - q_a.detach())
            q_loss = q_loss + (v_target - values_g).pow(2).mean()
        g_mean, g_ls = (g / n).split([p.shape[-1] for p in phi], -1) if len(phi) == 2 else (g / n, None)
        surrogate = -(g_mean.detach() * pi_out).sum()
        if g_ls is not None:
            surrogate = surrogate - (g_ls.detach() * model.log_std.expand_as(pi_out)).sum()
        loss = surrogate + cfg.q_coef * q_loss
        return loss, {"policy_loss": -objective.detach().mean().item(), "q_loss": q_loss.item(),
                      "entropy": entropy.detach().mean().item(), "rho": rho.mean().item(),
                      "kl_avg": kl_mean, "trust_region_active": tr_active}

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def buffer_bytes(self) -> int:
        return self.replay.nbytes if self.replay is not None else 0

    def state_dict(self) -> dict:
        st = {"optimizer": self.optimizer.state_dict()}
        if self.avg is not None:
            st["avg"] = self.avg.state_dict()
        if self.replay is not None:
            st["replay"] = self.replay.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.avg is not None:
            self.avg.load_state_dict(state["avg"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])
