"""Advantage actor-critic update rule (A2C / A3C, Mnih et al. 2016).

One gradient step per segment of ``n_steps`` from every env: the policy gradient
-A * log pi(a|s) with A the n-step (or GAE) advantage, a value loss, an entropy bonus, gradient-norm
clipping, then RMSprop (TensorFlow-style) or Adam.

The same rule serves both runners. On the synchronous runner the gradients step the model they
were computed on. On the asynchronous runner (A3C) each worker computes them on its local copy
and they are applied to the global model in shared memory (``apply_to``) through an optimiser
whose statistics are shared too (``shared_state``); the worker then re-syncs its copy.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from contrl.algos.optim import make_optimizer
from contrl.config import A2CConfig
from contrl.storage.rollout import Rollout


class A2C:
    def __init__(self, model: nn.Module, cfg: A2CConfig, apply_to: Optional[Iterable[torch.Tensor]] = None,
                 shared_state: Optional[dict] = None):
        self.model, self.cfg = model, cfg
        self.params = list(model.parameters())
        self.targets = list(apply_to) if apply_to is not None else self.params
        self.optimizer = make_optimizer(cfg.optimizer, self.targets, cfg.lr, cfg.alpha, cfg.eps, state=shared_state)

    def set_progress(self, fraction_done: float) -> float:
        """Linear learning-rate annealing; returns the lr in force."""
        lr = self.cfg.lr * (1.0 - fraction_done) if self.cfg.anneal_lr else self.cfg.lr
        self.optimizer.lr = lr
        return lr

    def update(self, rollout: Rollout, generator: Optional[torch.Generator] = None) -> dict:
        stats = self.gradients(rollout)
        if self.targets is not self.params:  # A3C: the local gradients step the global model
            for target, p in zip(self.targets, self.params):
                target.grad = p.grad
        self.step()
        return stats

    def step(self) -> None:
        """The optimiser steps the gradients in ``targets``' ``.grad``."""
        self.optimizer.step()

    def gradients(self, rollout: Rollout) -> dict:
        """The clipped gradients of the loss on ``rollout`` into the model's ``.grad`` (no step; the
        Ray runner's A3C workers send them to the learner)."""
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
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
