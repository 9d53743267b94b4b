"""PPO update rule (Schulman et al. 2017): clipped surrogate, value loss, entropy bonus.

Reads top to bottom: GAE advantages and returns from the rollout; then for each epoch, for each
shuffled minibatch of the rollout (samples; for a recurrent network whole sequences replayed
from their stored initial states), compute the probability ratio r = pi(a|s) / pi_old(a|s),
the clipped surrogate min(r*A, clip(r)*A), a (optionally clipped) value loss and the entropy;
step Adam with gradient-norm clipping; stop the epochs early when the approximate KL passes
``target_kl``.
"""

from __future__ import annotations

import torch
from torch import nn

from contrl.algos.optim import FusedAdam
from contrl.algos.rule import Rule
from contrl.config import PPOConfig
from contrl.storage.rollout import Rollout


class PPO(Rule):
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
        for _epoch in range(cfg.n_epochs):
            for mb in rollout.minibatches(cfg.batch_size, generator):  # samples, or sequences (LSTM)
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

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if not self.checked(loss):  # non-finite (nan_policy skip_update): not applied
                    skipped += 1
                    continue
                self.optimizer.step()

                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # low-variance unbiased estimator
                    clip_frac = ((ratio - 1).abs() > cfg.clip_range).float().mean()
                    stats.append(torch.stack([policy_loss, value_loss, entropy, approx_kl, clip_frac]))
                if cfg.target_kl is not None and approx_kl.item() > 1.5 * cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {"epochs_done": _epoch + 1, "skipped_updates": skipped}
        if stats:
            means = torch.stack(stats).mean(0).tolist()
            out.update(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), means))
        out["explained_variance"] = rollout.explained_variance()
        return out
