"""Advantage actor-critic update rule (A2C / A3C, Mnih et al. 2016).

One gradient step per segment of ``n_steps`` from every env: the policy gradient
-A * log pi(a|s) with A the n-step (or GAE) advantage, a value loss, an entropy bonus, gradient-norm
clipping, then RMSprop (TensorFlow-style) or Adam.

The rule knows nothing of processes: on the asynchronous runners (A3C) the runner takes the
gradient ``updates()`` leaves in the local model and applies it to the shared weights.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from contrl.algos.optim import make_optimizer
from contrl.algos.rule import Rule
from contrl.config import A2CConfig
from contrl.storage.rollout import Rollout


class A2C(Rule):
    def __init__(self, model, cfg: A2CConfig, **kw):
        super().__init__(model, cfg, **kw)
        self.optimizer = make_optimizer(cfg.optimizer, self.params, cfg.lr, cfg.alpha, cfg.eps)

    def updates(self, rollout: Rollout, generator: Optional[torch.Generator] = None) -> Iterator[dict]:
        """One gradient: n-step (GAE) targets, then the loss on every sample of the rollout."""
        if rollout.nonfinite:
            yield self.drop(rollout.nonfinite)
            return
        rollout.finish(self.cfg.gamma, self.cfg.gae_lambda)
        yield {**self.gradients(rollout), "explained_variance": rollout.explained_variance()}

    def gradients(self, rollout: Rollout) -> dict:
        """The clipped gradients of the loss on ``rollout`` into the model's ``.grad`` (no step)."""
        cfg, model = self.cfg, self.model
        batch = rollout.whole()  # every sample (recurrent: every sequence, from its stored state)
        pi_out, values = model.forward_batch(batch)
        dist = model.dist(pi_out)
        logp = dist.log_prob(batch.actions)

        adv = batch.advantages
        if cfg.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = -(adv * logp).mean()
        value_loss = (values - batch.returns).pow(2).mean()
        entropy = dist.entropy().mean()
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy

        for p in self.params:
            p.grad = None
        loss.backward()
        if not self.checked(loss):
            return {"skipped_updates": 1.0}
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}
