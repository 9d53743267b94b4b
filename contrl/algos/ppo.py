"""PPO update rule (Schulman et al. 2017): clipped surrogate, value loss, entropy bonus.

Reads top to bottom: GAE advantages and returns from the rollout; then for each epoch, for each
shuffled minibatch of the rollout (samples; for a recurrent network whole sequences replayed
from their stored initial states), compute the probability ratio r = pi(a|s) / pi_old(a|s),
the clipped surrogate min(r*A, clip(r)*A), a (optionally clipped) value loss and the entropy;
step Adam with gradient-norm clipping; stop the epochs early when the approximate KL passes
``target_kl``.

With an MLP actor-critic (``ActorCritic``) the minibatch skips autograd: ``_hand_loss`` computes
the same loss and its gradient with respect to the distribution parameters, values and log-std
by the formulas below, and the network back-propagates them by hand (``backward_into``) -- at
64-sample minibatches autograd's per-node overhead was most of the update (issue 17). The same
gradients to float32 rounding (tests/test_ppo.py compares them with autograd's);
``PPO.hand_backward = False`` (or a network without ``backward_into``) takes autograd's path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from contrl.algos.optim import FusedAdam
from contrl.algos.rule import Rule
from contrl.config import PPOConfig
from contrl.nets.distributions import _LOG_2PI
from contrl.storage.rollout import Rollout


_sum = np.add.reduce  # ndarray.sum / .mean without their Python wrappers (several us each)


def _mean(x: np.ndarray):
    return _sum(x, None) / x.size


class PPO(Rule):
    hand_backward = True  # take the network's hand-written backward where it has one

    def __init__(self, model: nn.Module, cfg: PPOConfig, **kw):
        super().__init__(model, cfg, **kw)
        self.optimizer = FusedAdam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict:
        cfg, model = self.cfg, self.model
        if rollout.nonfinite:  # nan_policy skip_update: an env returned a non-finite value
            return self.drop(rollout.nonfinite)
        rollout.finish(cfg.gamma, cfg.gae_lambda)  # GAE advantages and returns
        stats = []  # per minibatch: policy loss, value loss, entropy, approx KL, clip fraction
        stop, skipped = False, 0
        by_hand = self.hand_backward and getattr(model, "hand_backward", False) and len(model.act_shape) <= 1
        for _epoch in range(cfg.n_epochs):
            for mb in rollout.minibatches(cfg.batch_size, generator):  # samples, or sequences (LSTM)
                if by_hand:
                    loss, mb_stats = self._hand_loss(mb)  # gradients written
                else:
                    loss, mb_stats = self._loss(mb)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                if not self.checked(loss):  # non-finite (nan_policy skip_update): not applied
                    skipped += 1
                    continue
                self.optimizer.step()
                stats.append(mb_stats)
                if cfg.target_kl is not None and mb_stats[3] > 1.5 * cfg.target_kl:  # approx KL
                    stop = True
                    break
            if stop:
                break
        out = {"epochs_done": _epoch + 1, "skipped_updates": skipped}
        if stats:
            means = [sum(column) / len(stats) for column in zip(*stats)]
            out.update(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), means))
        out["explained_variance"] = rollout.explained_variance()
        return out

    def _loss(self, mb) -> tuple:
        """The minibatch's loss through autograd, and its statistics: (policy loss, value loss,
        entropy, approximate KL, clip fraction) as floats."""
        cfg, model = self.cfg, self.model
        pi_out, values = model.forward_batch(mb)
        dist = model.dist(pi_out)
        logp = dist.log_prob(mb.actions)
        log_ratio = logp - mb.logp
        ratio = log_ratio.exp()

        adv = mb.advantages
        if cfg.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range) * adv)
        policy_loss = -surrogate.mean()

        if cfg.clip_range_vf is None:
            value_loss = (values - mb.returns).pow(2).mean()
        else:
            clipped = mb.values + (values - mb.values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
            value_loss = torch.max((values - mb.returns).pow(2), (clipped - mb.returns).pow(2)).mean()

        entropy = dist.entropy().mean()
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()  # low-variance unbiased estimator
            clip_frac = ((ratio - 1).abs() > cfg.clip_range).float().mean()
            stats = torch.stack([policy_loss, value_loss, entropy, approx_kl, clip_frac]).tolist()
        return loss, stats

    @torch.no_grad()
    @np.errstate(all="ignore")  # a diverging run's overflow is reported once, by ``checked`` (NonFinite)
    def _hand_loss(self, mb) -> tuple:
        """``_loss`` without autograd: the same values, and every parameter's ``.grad`` written by
        the network's ``backward_into`` from these derivatives (B samples):
        - policy: d(-mean min(rA, clip(r)A))/d log pi = -rA/B where the unclipped term is taken
          or r is inside the clip range (torch.min splits a tie evenly; inside the range both
          terms are rA), else 0;
        - value: d(c_v mean (V - R)^2)/dV = 2 c_v (V - R)/B; clipped (clip_range_vf): torch.max's
          choice between the two squares (a tie split evenly), the clipped one passing only
          where V - V_old is inside the range;
        - Gaussian: d log pi/d mu = z/sigma, d log pi/d log sigma = z^2 - 1 (z = (a - mu)/sigma),
          d entropy/d log sigma = 1 per dimension;
        - categorical (l the normalised log-probs, p = exp l): d log pi(a)/d logits = onehot(a) - p,
          d H/d logits = -p (l + H).
        The arithmetic on these [B] and [B, A] arrays runs in numpy (float32): a numpy call on 64
        numbers costs a fraction of a torch call's dispatch; the matmuls stay in torch."""
        cfg, model = self.cfg, self.model
        pi_t, values_t, cache = model.forward_cached(mb.obs)
        pi_out, values = pi_t.numpy(), values_t.numpy()
        B = values.shape[0]
        adv = mb.advantages.numpy()
        if cfg.normalize_advantage and B > 1:
            centred = adv - _mean(adv)
            adv = centred / (np.sqrt(_sum(centred * centred) / (B - 1)) + np.float32(1e-8))  # std, ddof 1
        if model.discrete:
            top = pi_out.max(-1, keepdims=True)
            logits = pi_out - (top + np.log(_sum(np.exp(pi_out - top), -1, keepdims=True)))  # normalised log-probs
            probs = np.exp(logits)
            taken = mb.actions.numpy().astype(np.int64)[:, None]
            logp = np.take_along_axis(logits, taken, -1)[:, 0]
            ent = -_sum(probs * logits, -1)
            entropy = _mean(ent)
        else:
            log_std = model.log_std.detach().numpy()
            inv_std = np.exp(-log_std)
            z = (mb.actions.numpy().reshape(B, -1) - pi_out) * inv_std
            logp = _sum(-0.5 * (z * z) - log_std - np.float32(0.5 * _LOG_2PI), -1)
            entropy = _sum(log_std + np.float32(0.5 * (1.0 + _LOG_2PI)))  # the same for every sample
        log_ratio = logp - mb.logp.numpy()
        ratio = np.exp(log_ratio)

        lo, hi = 1 - cfg.clip_range, 1 + cfg.clip_range
        inside = (ratio >= lo) & (ratio <= hi)
        unclipped, clipped = ratio * adv, np.minimum(np.maximum(ratio, lo), hi) * adv
        policy_loss = -_mean(np.minimum(unclipped, clipped))
        g_logp = np.where((unclipped < clipped) | inside, unclipped, np.float32(0)) * np.float32(-1.0 / B)

        returns = mb.returns.numpy()
        err = values - returns
        if cfg.clip_range_vf is None:
            value_loss = _mean(err * err)
            g_values = err * np.float32(2.0 * cfg.vf_coef / B)
        else:
            old = mb.values.numpy()
            step = values - old
            err_c = old + np.minimum(np.maximum(step, -cfg.clip_range_vf), cfg.clip_range_vf) - returns
            sq, sq_c = err * err, err_c * err_c
            value_loss = _mean(np.maximum(sq, sq_c))
            # torch.max's choice: the larger square, a tie split evenly
            w = np.where(sq > sq_c, np.float32(1), np.where(sq == sq_c, np.float32(0.5), np.float32(0)))
            passes = (step >= -cfg.clip_range_vf) & (step <= cfg.clip_range_vf)
            g_values = (w * err + (1 - w) * err_c * passes) * np.float32(2.0 * cfg.vf_coef / B)

        if model.discrete:
            g_pi = probs * ((cfg.ent_coef / B) * (logits + ent[:, None]) - g_logp[:, None])
            np.put_along_axis(g_pi, taken, np.take_along_axis(g_pi, taken, -1) + g_logp[:, None], -1)
            model.backward_into(cache, torch.from_numpy(g_pi), torch.from_numpy(g_values))
        else:
            gz = g_logp[:, None] * z
            g_log_std = _sum(gz * z - g_logp[:, None], 0) - np.float32(cfg.ent_coef)
            model.backward_into(cache, torch.from_numpy(gz * inv_std), torch.from_numpy(g_values),
                                torch.from_numpy(g_log_std))
        loss = float(policy_loss) + cfg.vf_coef * float(value_loss) - cfg.ent_coef * float(entropy)
        approx_kl = float(_mean((ratio - 1) - log_ratio))
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1) > cfg.clip_range)) / B
        return loss, (float(policy_loss), float(value_loss), float(entropy), approx_kl, clip_fraction)
