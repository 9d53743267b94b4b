"""Advantage actor-critic update rule (A2C / A3C, Mnih et al. 2016).

One gradient step per segment of ``n_steps`` from every env: the policy gradient
-A * log pi(a|s) with A the n-step (or GAE) advantage, a value loss, an entropy bonus, gradient-norm
clipping, then RMSprop (TensorFlow-style) or Adam. With an MLP actor-critic the gradient skips
autograd, as PPO's minibatches do (contrl/algos/hand.py; ``A2C.hand_backward = False`` for autograd's
path): the same gradients to float32 rounding (tests/test_a2c.py).

The rule knows nothing of processes: on the asynchronous runners (A3C) the runner takes the
gradient ``updates()`` leaves in the local model and applies it to the shared weights.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from contrl.algos import hand
from contrl.algos.optim import make_optimizer
from contrl.algos.rule import Rule
from contrl.config import A2CConfig
from contrl.storage.rollout import Rollout


class A2C(Rule):
    hand_backward = True  # take the network's hand-written backward where it has one (contrl/algos/hand.py)

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
        batch = rollout.whole()  # every sample (recurrent: every sequence, from its stored state)
        if hand.takes_hand_path(self, self.model):
            loss, stats = self._hand_loss(batch)  # gradients written
        else:
            loss, stats = self._loss(batch)
            for p in self.params:
                p.grad = None
            loss.backward()
        if not self.checked(loss):
            return {"skipped_updates": 1.0}
        return dict(zip(("policy_loss", "value_loss", "entropy"), stats))

    def _loss(self, batch) -> tuple:
        """The loss through autograd, and its statistics (policy loss, value loss, entropy) as floats."""
        cfg, model = self.cfg, self.model
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
        return loss, torch.stack([policy_loss, value_loss, entropy]).tolist()

    @torch.no_grad()
    @np.errstate(all="ignore")  # a diverging run's overflow is reported once, by ``checked`` (NonFinite)
    def _hand_loss(self, batch) -> tuple:
        """``_loss`` without autograd (contrl/algos/hand.py): the same values, and every
        parameter's ``.grad`` written by the network's ``backward_into``; the policy term's
        derivative is d(-mean A log pi)/d log pi = -A/B."""
        cfg, model = self.cfg, self.model
        policy, values, adv, cache = hand.forward(model, batch, cfg.normalize_advantage)
        B = values.shape[0]
        policy_loss = -hand.mean(adv * policy.logp)
        value_loss, g_values = hand.value_terms(values, batch.returns.numpy(), cfg.vf_coef)
        g_pi, g_log_std = policy.grads(adv * np.float32(-1.0 / B), cfg.ent_coef)
        model.backward_into(cache, g_pi, torch.from_numpy(g_values), g_log_std)
        stats = float(policy_loss), float(value_loss), float(policy.entropy)
        return stats[0] + cfg.vf_coef * stats[1] - cfg.ent_coef * stats[2], stats
