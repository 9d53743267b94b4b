"""PPO update rule (Schulman et al. 2017): clipped surrogate, value loss, entropy bonus.

Reads top to bottom: GAE advantages and returns from the rollout; then for each epoch, for each
shuffled minibatch of the rollout (samples; for a recurrent network whole sequences replayed
from their stored initial states), compute the probability ratio r = pi(a|s) / pi_old(a|s),
the clipped surrogate min(r*A, clip(r)*A), a (optionally clipped) value loss and the entropy;
step Adam with gradient-norm clipping; stop the epochs early when the approximate KL passes
``target_kl``.

With an MLP actor-critic (``ActorCritic``) the minibatch skips autograd: ``_hand_loss`` computes
the same loss and its gradient with respect to the distribution parameters, values and log-std
(contrl/algos/hand.py), and the network back-propagates them by hand (``backward_into``) -- at
64-sample minibatches autograd's per-node overhead was most of the update (issue 17). The same
gradients to float32 rounding (tests/test_ppo.py compares them with autograd's);
``PPO.hand_backward = False`` (or a network without ``backward_into``) takes autograd's path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from contrl.algos import hand
from contrl.algos.optim import FusedAdam
from contrl.algos.rule import Rule
from contrl.config import PPOConfig
from contrl.storage.rollout import Rollout


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
        by_hand = hand.takes_hand_path(self, model)
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
        the network's ``backward_into`` from these derivatives (B samples; the distributions' and
        the plain value loss's in contrl/algos/hand.py):
        - policy: d(-mean min(rA, clip(r)A))/d log pi = -rA/B where the unclipped term is taken
          or r is inside the clip range (torch.min splits a tie evenly; inside the range both
          terms are rA), else 0;
        - value, clipped (clip_range_vf): torch.max's choice between the two squares (a tie split
          evenly), the clipped one passing only where V - V_old is inside the range."""
        cfg, model = self.cfg, self.model
        policy, values, adv, cache = hand.forward(model, mb, cfg.normalize_advantage)
        B = values.shape[0]
        log_ratio = policy.logp - mb.logp.numpy()
        ratio = np.exp(log_ratio)

        lo, hi = 1 - cfg.clip_range, 1 + cfg.clip_range
        inside = (ratio >= lo) & (ratio <= hi)
        unclipped, clipped = ratio * adv, np.minimum(np.maximum(ratio, lo), hi) * adv
        policy_loss = -hand.mean(np.minimum(unclipped, clipped))
        g_logp = np.where((unclipped < clipped) | inside, unclipped, np.float32(0)) * np.float32(-1.0 / B)

        returns = mb.returns.numpy()
        if cfg.clip_range_vf is None:
            value_loss, g_values = hand.value_terms(values, returns, cfg.vf_coef)
        else:
            old = mb.values.numpy()
            step = values - old
            err = values - returns
            err_c = old + np.minimum(np.maximum(step, -cfg.clip_range_vf), cfg.clip_range_vf) - returns
            sq, sq_c = err * err, err_c * err_c
            value_loss = hand.mean(np.maximum(sq, sq_c))
            # torch.max's choice: the larger square, a tie split evenly
            w = np.where(sq > sq_c, np.float32(1), np.where(sq == sq_c, np.float32(0.5), np.float32(0)))
            passes = (step >= -cfg.clip_range_vf) & (step <= cfg.clip_range_vf)
            g_values = (w * err + (1 - w) * err_c * passes) * np.float32(2.0 * cfg.vf_coef / B)

        g_pi, g_log_std = policy.grads(g_logp, cfg.ent_coef)
        model.backward_into(cache, g_pi, torch.from_numpy(g_values), g_log_std)
        entropy = float(policy.entropy)
        loss = float(policy_loss) + cfg.vf_coef * float(value_loss) - cfg.ent_coef * entropy
        approx_kl = float(hand.mean((ratio - 1) - log_ratio))
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1) > cfg.clip_range)) / B
        return loss, (float(policy_loss), float(value_loss), entropy, approx_kl, clip_fraction)
