"""ACER update rule (Wang et al. 2016, "Sample Efficient Actor-Critic with Experience Replay").

Per collected segment: one on-policy update on it, then it goes into the replay memory and,
once ``replay_start`` transitions are stored, Poisson(``replay_ratio``) off-policy updates on
segments sampled from it (``updates`` yields these gradients one by one; ``update`` steps each
in turn). Each update (``gradients``, then ``step``) reads top to bottom:

0. The segment's raw observations and rewards (what the memory keeps) are normalised and
   scaled with the statistics in force now (``ReplayInputs``; nothing without norm_obs /
   norm_reward).
1. One forward of the network over the segment (``storage.replay.SegmentForward``): its k
   steps and, for every episode piece, the observation to bootstrap from; pi, Q and V. With an
   LSTM the pieces are sequences from their stored initial states, padded into one call.
2. Importance weights rho = pi(a|s) / mu(a|s) against the stored behaviour policy mu.
3. Retrace targets Q_ret, computed backwards with truncated weights c_t = min(1, rho_t)
   (continuous: min(1, rho_t^(1/d))); a terminated step bootstraps nothing, a truncated one
   V(final observation), the segment's end V(next observation).
4. The policy gradient with truncated importance sampling min(c, rho) plus the bias
   correction (discrete: the exact sum over actions; continuous: one action sampled from pi),
   and the entropy bonus -- taken with respect to the distribution's statistics phi (discrete:
   the probabilities, as the paper and OpenAI Baselines, or the logits with
   ``trust_region_on: logits``; continuous: the mean and log-std), and then
5. projected onto the trust region around the average policy network:
   z = g - max(0, (k.g - delta) / |k|^2) k, k = grad_phi KL(pi_avg || pi), per sample;
   backpropagated from phi into the network.
6. The critic: (Q_ret - Q(s, a))^2; continuous also the SDN value target
   V + min(1, rho)(Q_ret - Q~(s, a)).
7. Gradient-norm clipping, the optimiser step, then the average network moves towards the
   network: theta_avg = avg_decay * theta_avg + (1 - avg_decay) * theta.

Steps 1-6 are ``loss`` (autograd) or, on an MLP torso, ``_hand_loss``: the same derivatives
written out in numpy and the network back-propagated by hand (issue 17; tested against ``loss``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterator

import numpy as np
import torch
from torch import nn

from contrl.algos import hand
from contrl.algos.optim import make_optimizer
from contrl.algos.rule import Rule, model_tensors
from contrl.config import ACERConfig
from contrl.nets.distributions import _LOG_2PI, Categorical, DiagGaussian
from contrl.storage.replay import ReplayBuffer, Segment, SegmentForward
from contrl.storage.rollout import Rollout

MAX_LOG_RATIO = 30.0  # exp(30) ~ 1e13: bounds rho without changing min(c, rho) for any sane c


def retrace(rewards, q_a, values, c, terminated, truncated, v_final, v_last, gamma: float) -> np.ndarray:
    """Retrace targets over a ``[k, B]`` segment, backwards from ``v_last`` = V(s_k), in numpy
    float32 (arrays or CPU tensors in; 20 steps of 8 columns are ~100 numpy calls of ~1 us).

    ``Q_ret_t = r_t + gamma * next_t`` where ``next_t`` is 0 if the episode terminated at t,
    ``v_final_t`` = V(final observation) if it was truncated at t, and otherwise
    ``c_{t+1} (Q_ret_{t+1} - Q(s_{t+1}, a_{t+1})) + V(s_{t+1})`` (``v_last`` after the last step).
    """
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    rewards, q_a, values, c, v_final = f32(rewards), f32(q_a), f32(values), f32(c), f32(v_final)
    terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
    out = np.empty_like(rewards)
    carry = f32(v_last)
    gamma = np.float32(gamma)
    for t in range(rewards.shape[0] - 1, -1, -1):
        nxt = np.where(terminated[t], np.float32(0.0), np.where(truncated[t], v_final[t], carry))
        out[t] = rewards[t] + gamma * nxt
        carry = c[t] * (out[t] - q_a[t]) + values[t]
    return out


def trust_region(g: torch.Tensor, k: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row projection of ``g`` onto the half-space ``k.z <= delta`` (Wang et al. eq. 12):
    ``z = g - max(0, (k.g - delta) / |k|^2) k``. Returns (z, the scale applied per row)."""
    scale = ((k * g).sum(-1) - delta).div((k * k).sum(-1).clamp_min(1e-12)).clamp_min(0.0)
    return g - scale.unsqueeze(-1) * k, scale


_sum = np.add.reduce


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return x - (top + np.log(_sum(np.exp(x - top), -1, keepdims=True)))


def _gauss_logp(z: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log N(a; m, sigma) from z = (a - m) / sigma, summed over the action's dimensions."""
    return _sum(np.float32(-0.5) * (z * z) - log_std - np.float32(0.5 * _LOG_2PI), -1)


class ACER(Rule):
    keeps_behaviour = True  # the acting loop keeps mu, final observations and terminated flags
    hand_backward = True  # take the network's hand-written backward where it has one (``_hand_loss``)

    def __init__(self, model: nn.Module, cfg: ACERConfig, n_envs: int = 1, seq_len: int = 0, memory: bool = True):
        """``memory=False``: no replay memory (a learner whose workers keep their own)."""
        super().__init__(model, cfg, n_envs, seq_len)
        self.optimizer = make_optimizer(cfg.optimizer, self.params, cfg.lr, cfg.alpha, cfg.eps)
        self.avg = None
        if cfg.trust_region:
            self.avg = copy.deepcopy(model)
            for p in self.avg.parameters():
                p.requires_grad_(False)
        if cfg.replay_ratio > 0 and memory:
            self.memory = ReplayBuffer(cfg.buffer_size, cfg.n_steps, n_envs, *self._memory_shapes())
        self.q_opc = cfg.q_opc if cfg.q_opc is not None else not model.discrete
        self.replayed = 0  # replayed updates after the last new segment

    def _memory_shapes(self) -> tuple:
        m = self.model
        return m.obs_dim, m.act_shape, m.act_dim if m.discrete else 2 * m.act_dim, m.state_size

    def memory_size(self):
        if self.cfg.replay_ratio <= 0:
            return None
        return ReplayBuffer.size(self.cfg.buffer_size, self.cfg.n_steps, self.n_envs, *self._memory_shapes())

    def updates(self, rollout: Rollout, generator: torch.Generator) -> Iterator[dict]:
        """The on-policy gradient of the new segment, then Poisson(replay_ratio) replayed ones."""
        self.replayed = 0
        if rollout.nonfinite:  # nan_policy skip_update: neither learned from nor stored
            yield self.drop(rollout.nonfinite)
            return
        seg = Segment.from_rollout(rollout)
        yield self.gradients(seg, generator)
        self.replayed = self.store(seg, generator)
        for _ in range(self.replayed):
            yield self.gradients(self.memory.sample(self.n_envs, generator), generator)

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict:
        return {**super().update(rollout, generator), "replay_updates": self.replayed}

    def store(self, seg: Segment, generator: torch.Generator) -> int:
        """Put a new segment in the memory; returns how many replayed updates follow it:
        Poisson(replay_ratio) once ``replay_start`` transitions are stored, else none."""
        if self.memory is None:
            return 0
        self.memory.add(seg)
        if self.memory.transitions < self.cfg.replay_start:
            return 0
        rate = torch.tensor(float(self.cfg.replay_ratio), dtype=torch.float64)
        return int(torch.poisson(rate, generator=generator))

    # -- one update on one [k, B] segment ------------------------------------------------------
    def gradients(self, seg: Segment, generator: torch.Generator) -> dict:
        """The clipped gradients of ACER's loss on ``seg`` into the model's ``.grad`` (no step)."""
        if hand.takes_hand_path(self, self.model):
            loss, stats = self._hand_loss(seg, generator)  # gradients written
        else:
            loss, stats = self.loss(seg, generator)
            for p in self.params:
                p.grad = None
            loss.backward()
        return stats if self.checked(loss) else {"skipped_updates": 1.0}

    def step(self) -> None:
        """7. The optimiser steps the gradients in ``.grad``, then the average network follows."""
        self.optimizer.step()
        if self.avg is not None:
            with torch.no_grad():
                avg_params = list(self.avg.parameters())
                torch._foreach_mul_(avg_params, self.cfg.avg_decay)
                torch._foreach_add_(avg_params, self.params, alpha=1.0 - self.cfg.avg_decay)

    def loss(self, seg: Segment, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Steps 1-6: a loss whose gradient is ACER's (the policy's part already projected)."""
        cfg, model = self.cfg, self.model
        k, B = seg.rewards.shape
        n = k * B
        seg = self._inputs_now(seg)  # raw in memory: normalised and scaled with the statistics of now
        # 1. one forward: the k steps and, per piece of episode, the observation to bootstrap from
        plan = SegmentForward(seg, model.recurrent)
        pi_all, hv_all = plan.run(model)
        pi_out, hv = pi_all[plan.step_rows], hv_all[plan.step_rows]
        with torch.no_grad():
            v_last, v_final = plan.bootstrap_values(model.v(pi_all[plan.boot_rows], hv_all[plan.boot_rows]))
        actions = seg.actions.reshape((n,) + seg.actions.shape[2:])

        # the policy as a function of its statistics phi, so its gradient can be projected:
        # discrete, the probabilities (as the paper and Baselines; or the logits); continuous,
        # the Gaussian's mean and log-std
        on_probs = model.discrete and cfg.trust_region_on == "probs"
        phi = [(torch.softmax(pi_out.detach(), -1) if on_probs else pi_out.detach()).requires_grad_()]
        if not model.discrete:
            phi.append(model.log_std.detach().expand_as(pi_out).clone().requires_grad_())
        if model.discrete:
            dist = Categorical.of_probs(phi[0]) if on_probs else Categorical(phi[0])
        else:
            dist = DiagGaussian(*phi)
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
            q_ret = torch.from_numpy(retrace(seg.rewards, view(q_a.detach()), view(values), view(c_trace),
                                             seg.terminated, seg.truncated, view(v_final), v_last,
                                             cfg.gamma).reshape(n))
            q_pg = q_ret
            if self.q_opc:  # Q_opc: Retrace with every c = 1, for the policy gradient
                q_pg = torch.from_numpy(retrace(seg.rewards, view(q_a.detach()), view(values), np.ones((k, B)),
                                                seg.terminated, seg.truncated, view(v_final), v_last,
                                                cfg.gamma).reshape(n))

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
                avg_pi = plan.run(self.avg)[0][plan.step_rows]
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
        surrogate = -(g_mean.detach() * (torch.softmax(pi_out, -1) if on_probs else pi_out)).sum()
        if g_ls is not None:
            surrogate = surrogate - (g_ls.detach() * model.log_std.expand_as(pi_out)).sum()
        loss = surrogate + cfg.q_coef * q_loss
        return loss, {"policy_loss": -objective.detach().mean().item(), "q_loss": q_loss.item(),
                      "entropy": entropy.detach().mean().item(), "rho": rho.mean().item(),
                      "kl_avg": kl_mean, "trust_region_active": tr_active}

    def _inputs_now(self, seg: Segment) -> Segment:
        """0. The raw observations and rewards in memory, normalised and scaled with the statistics of now."""
        if self.inputs is None:
            return seg
        return dataclasses.replace(seg, obs=self.inputs.obs(seg.obs), final_obs=self.inputs.obs(seg.final_obs),
                                   rewards=self.inputs.rewards(seg.rewards))

    @torch.no_grad()
    @np.errstate(all="ignore")  # a diverging run's overflow is reported once, by ``checked`` (NonFinite)
    def _hand_loss(self, seg: Segment, generator: torch.Generator) -> tuple[float, dict]:
        """``loss`` and its backward without autograd (an MLP torso; issue 17): steps 1-6 with the
        derivatives with respect to phi and to the heads' outputs written out, in numpy float32 on
        the ``[n, A]`` arrays; the network's hand-written backward (``features_backward``) writes
        every ``.grad``. The same loss, statistics and gradients as ``loss().backward()`` to float32
        rounding (tests/test_acer.py). Per sample, with l the log-probabilities, p = exp(l), w_b
        the objective's weight on l_b (the truncated term's min(c, rho)(Q_pg - V) at the taken
        action plus the bias correction's [1 - c/rho_b]_+ p_b (Q_b - V)) and H the entropy:
        on the logits, dO/dphi = w - p sum(w) - ent p (l + H), dKL(avg || pi)/dphi = p sum(p_avg)
        - p_avg; on the probabilities f, dO/df = (w - ent p (l + 1)) / f, dKL/df = -p_avg / f (0
        where f < 1e-8, log's clamp); Gaussian, z = (a - m)/sigma, d log pi/dm = z/sigma,
        d log pi/d log sigma = z^2 - 1, dH/d log sigma = 1, dKL/dm = (m - m_avg)/sigma^2,
        dKL/d log sigma = 1 - sigma_avg^2/sigma^2 - (m - m_avg)^2/sigma^2."""
        cfg, model = self.cfg, self.model
        k, B = seg.rewards.shape
        n = k * B
        seg = self._inputs_now(seg)
        # 1. one forward of the k*B steps then the bootstrap inputs (an MLP plan's row order),
        # keeping the step rows' layer outputs for the backward
        plan = SegmentForward(seg, False)
        pi_all, hv_all, cache = model.features_cached(plan.inputs)
        cache = tuple([h[:n] for h in hs] for hs in cache)
        pi_t, hv = pi_all[:n], hv_all[:n]
        v_last, v_final = plan.bootstrap_values(model.v(pi_all[n:], hv_all[n:]))
        pi = pi_t.numpy()
        mu_params = seg.mu.reshape(n, -1).numpy()
        view = lambda x: x.reshape(k, B)  # noqa: E731
        c = np.float32(cfg.c)
        avg_pi = self.avg.policy_out(plan.inputs[:n]).numpy() if self.avg is not None else None

        if model.discrete:
            on_probs = cfg.trust_region_on == "probs"
            a = seg.actions.reshape(n, 1).numpy().astype(np.int64)
            q_t = model.q_values(hv)
            q = q_t.numpy()
            if on_probs:  # phi = f = softmax(pi_out); the distribution read as log(max(f, 1e-8))
                f = np.exp(_log_softmax(pi))
                live = f >= np.float32(1e-8)
                lp = np.log(np.maximum(f, np.float32(1e-8)))
            else:
                lp = _log_softmax(pi)
            p = np.exp(lp)
            mu_l = _log_softmax(mu_params)
            logp = np.take_along_axis(lp, a, -1)[:, 0]
            log_rho = np.minimum(logp - np.take_along_axis(mu_l, a, -1)[:, 0], np.float32(MAX_LOG_RATIO))
            rho = np.exp(log_rho)
            q_a = np.take_along_axis(q, a, -1)[:, 0]
            values = _sum(p * q, -1)
            q_ret = retrace(seg.rewards, view(q_a), view(values), view(np.minimum(rho, np.float32(1.0))),
                            seg.terminated, seg.truncated, v_final, v_last, cfg.gamma).reshape(n)
            q_pg = q_ret if not self.q_opc else retrace(
                seg.rewards, view(q_a), view(values), np.ones((k, B), np.float32), seg.terminated, seg.truncated,
                v_final, v_last, cfg.gamma).reshape(n)
            # 4. the objective and its derivative with respect to phi
            w_a = np.minimum(rho, c) * (q_pg - values)
            rho_all = p / np.maximum(np.exp(mu_l), np.float32(1e-30))
            w = np.maximum(np.float32(1.0) - c / rho_all, np.float32(0.0)) * p * (q - values[:, None])  # bias corr.
            ent = -_sum(p * lp, -1)
            objective = w_a * logp + _sum(w * lp, -1) + np.float32(cfg.ent_coef) * ent
            np.put_along_axis(w, a, np.take_along_axis(w, a, -1) + w_a[:, None], -1)
            if on_probs:
                g = np.where(live, (w - np.float32(cfg.ent_coef) * p * (lp + np.float32(1.0))) / f, np.float32(0.0))
            else:
                g = w - p * _sum(w, -1, keepdims=True) - np.float32(cfg.ent_coef) * p * (lp + ent[:, None])
            kgrad = None
            if avg_pi is not None:
                avg_l = _log_softmax(avg_pi)
                avg_p = np.exp(avg_l)
                kl = _sum(avg_p * (avg_l - lp), -1)
                kgrad = (np.where(live, -avg_p / f, np.float32(0.0)) if on_probs
                         else p * _sum(avg_p, -1, keepdims=True) - avg_p)
        else:
            A = pi.shape[-1]
            log_std = model.log_std.detach()
            s_np = log_std.numpy()
            inv_std = np.exp(-s_np)
            actions = seg.actions.reshape(n, A).numpy()
            mean_t, std_t = pi_t, log_std.expand_as(pi_t).exp()
            u = mean_t + std_t * torch.randn((cfg.sdn_samples,) + mean_t.shape, generator=generator)
            a_new = mean_t + std_t * torch.randn(mean_t.shape, generator=generator)
            # the critic: V, and A(s, .) at the taken actions and the SDN's samples in one run
            values_g = model.v(pi_t, hv).numpy()
            adv, adv_cache = model.advantage_cached(hv, torch.cat([seg.actions.reshape(1, n, A), u]))
            adv = adv.numpy()
            adv_u = _sum(adv[1:], 0) / np.float32(cfg.sdn_samples)
            q_a = values_g + adv[0] - adv_u
            z1 = (actions - pi) * inv_std
            logp = _gauss_logp(z1, s_np)
            mu_m, mu_s = mu_params[:, :A], mu_params[:, A:]
            log_rho = np.minimum(logp - _gauss_logp((actions - mu_m) * np.exp(-mu_s), mu_s), np.float32(MAX_LOG_RATIO))
            rho = np.exp(log_rho)
            values = values_g
            c_trace = np.minimum(np.exp(log_rho / np.float32(A)), np.float32(1.0))
            q_ret = retrace(seg.rewards, view(q_a), view(values), view(c_trace), seg.terminated, seg.truncated,
                            v_final, v_last, cfg.gamma).reshape(n)
            q_pg = q_ret if not self.q_opc else retrace(
                seg.rewards, view(q_a), view(values), np.ones((k, B), np.float32), seg.terminated, seg.truncated,
                v_final, v_last, cfg.gamma).reshape(n)
            a2 = a_new.numpy()
            z2 = (a2 - pi) * inv_std
            logp_new = _gauss_logp(z2, s_np)
            rho_new = np.exp(np.minimum(logp_new - _gauss_logp((a2 - mu_m) * np.exp(-mu_s), mu_s),
                                        np.float32(MAX_LOG_RATIO)))
            q_new = values + model.advantage(hv, a_new).numpy() - adv_u
            w1 = np.minimum(rho, c) * (q_pg - values)
            w2 = np.maximum(np.float32(1.0) - c / rho_new, np.float32(0.0)) * (q_new - values)
            ent = np.full(n, _sum(s_np + np.float32(0.5 * (1.0 + _LOG_2PI))), np.float32)
            objective = w1 * logp + w2 * logp_new + np.float32(cfg.ent_coef) * ent
            g_log_sigma = w1[:, None] * (z1 * z1 - 1) + w2[:, None] * (z2 * z2 - 1) + np.float32(cfg.ent_coef)
            g = np.concatenate([(w1[:, None] * z1 + w2[:, None] * z2) * inv_std, g_log_sigma], -1)
            kgrad = None
            if avg_pi is not None:
                avg_s = self.avg.log_std.detach().numpy()
                d = (pi - avg_pi) * inv_std  # (m - m_avg) / sigma
                var_ratio = np.exp(np.float32(2.0) * (avg_s - s_np))
                kl = np.float32(0.5) * _sum(var_ratio + d * d - 1 - np.float32(2.0) * (avg_s - s_np), -1)
                kgrad = np.concatenate([d * inv_std, 1 - var_ratio - d * d], -1)

        # 5. the trust region around the average policy
        kl_mean, tr_active = 0.0, 0.0
        if kgrad is not None:
            scale = np.maximum((_sum(kgrad * g, -1) - np.float32(cfg.delta)) / np.maximum(_sum(kgrad * kgrad, -1),
                                                                                      np.float32(1e-12)), 0.0)
            g = g - scale[:, None] * kgrad
            kl_mean, tr_active = float(hand.mean(kl)), float(hand.mean(scale > 0))

        # 6. the critic; the network's gradients from the heads' outputs down
        q_coef = np.float32(cfg.q_coef)
        err = q_a - q_ret
        q_loss = hand.mean(err * err)
        e = q_coef * np.float32(2.0 / n) * err  # dL/dQ(s, a)
        gm = g / np.float32(n)
        if model.discrete:
            if on_probs:  # back through the softmax: dL/dpi_out = -f (gm - f.gm)
                g_pi = -f * (gm - _sum(gm * f, -1, keepdims=True))
                surrogate = -_sum(gm * f, None)
            else:
                g_pi, surrogate = -gm, -_sum(gm * pi, None)
            g_q = np.zeros_like(q)
            np.put_along_axis(g_q, a, e[:, None], -1)
            g_hv = model.q_backward(torch.from_numpy(g_q), hv)
            g_log_std = None
        else:
            v_target = values + np.minimum(rho, np.float32(1.0)) * (q_ret - q_a)
            v_err = values_g - v_target
            q_loss = q_loss + hand.mean(v_err * v_err)
            g_m, g_s = gm[:, :A], gm[:, A:]
            g_pi, g_log_std = -g_m, torch.from_numpy(-_sum(g_s, 0))
            surrogate = -_sum(g_m * pi, None) - _sum(g_s * s_np, None)
            g_adv = np.concatenate([e[None], np.broadcast_to(-e / np.float32(cfg.sdn_samples), (cfg.sdn_samples, n))])
            g_hv = model.advantage_backward(adv_cache, torch.from_numpy(g_adv))
            g_hv += model.v_backward(torch.from_numpy(e + q_coef * np.float32(2.0 / n) * v_err), hv)
        model.features_backward(cache, torch.from_numpy(np.ascontiguousarray(g_pi)), g_hv, g_log_std)
        loss = float(surrogate) + cfg.q_coef * float(q_loss)
        return loss, {"policy_loss": -float(hand.mean(objective)), "q_loss": float(q_loss),
                      "entropy": float(hand.mean(ent)), "rho": float(hand.mean(rho)),
                      "kl_avg": kl_mean, "trust_region_active": tr_active}

    # -- sharing and checkpoints ------------------------------------------------------------------
    def weights(self) -> list[torch.Tensor]:
        return super().weights() + (model_tensors(self.avg) if self.avg is not None else [])

    def share_memory(self) -> "ACER":
        super().share_memory()
        if self.avg is not None:
            self.avg.share_memory()
        return self

    def state_dict(self) -> dict:
        st = super().state_dict()
        if self.avg is not None:
            st["avg"] = self.avg.state_dict()
        if self.memory is not None:
            st["replay"] = self.memory.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.avg is not None:
            self.avg.load_state_dict(state["avg"])
        if self.memory is not None:
            self.memory.load_state_dict(state["replay"])
            inputs = self.inputs
            if not state["replay"].get("raw") and inputs is not None and (inputs.obs_norm or inputs.scaler):
                self.memory.count = self.memory.next = 0  # saved normalised (before raw replay): refilled
