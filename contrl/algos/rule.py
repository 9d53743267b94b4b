"""What every update rule shares: the interface the runners use, and nothing about processes.

A rule turns a rollout into parameter updates and computes its own targets from it (PPO and
A2C: GAE; ACER: Retrace). The runners see only this:

- ``new_rollout(n_envs)``: the ``[T, N]`` storage the rule reads (ACER's also keeps what replay
  needs: the behaviour policy, how episodes ended, the observation after the last step);
- ``set_progress(fraction done) -> lr``: the learning-rate schedule;
- ``update(rollout, generator) -> stats``: everything one rollout brings, applied here;
- ``updates(rollout, generator)``: the same as an iterator of gradients, for the asynchronous
  runners: each item is the statistics of one gradient left in the model's ``.grad``, which the
  caller applies where the weights live (``step()`` of the rule that owns them) before asking
  for the next (A2C: one; ACER: the on-policy one, then its Poisson(replay_ratio) replays);
- ``weights()``: the tensors a copy of the rule needs to compute the same gradients;
- ``memory`` / ``memory_size()``: a replay memory, for rules that keep one;
- ``share_memory()``, ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from contrl.storage.rollout import Rollout


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What a copy of a model needs: its state dict's tensors (parameters and buffers), in order."""
    return list(model.state_dict(keep_vars=True).values())


class Rule:
    keeps_behaviour = False  # rollouts also keep what replay needs
    memory = None  # the replay memory of a rule that keeps one

    def __init__(self, model: nn.Module, cfg, n_envs: int = 1, seq_len: int = 0, memory: bool = True):
        """``n_envs``: envs per update; ``seq_len``: training sequence length of a recurrent
        network; ``memory=False``: no replay memory (a learner whose workers keep their own)."""
        self.model, self.cfg, self.n_envs, self.seq_len = model, cfg, n_envs, seq_len
        self.params = list(model.parameters())
        self.optimizer = None  # set by the rule

    def new_rollout(self, n_envs: int) -> Rollout:
        m = self.model
        mu_dim = (m.act_dim if m.discrete else 2 * m.act_dim) if self.keeps_behaviour else 0
        return Rollout(self.cfg.n_steps, n_envs, m.obs_dim, m.act_shape, m.state_size, self.seq_len, mu_dim)

    def set_progress(self, fraction_done: float) -> float:
        """Linear learning-rate annealing (``anneal_lr``); returns the lr in force."""
        lr = self.cfg.lr * (1.0 - fraction_done) if self.cfg.anneal_lr else self.cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def update(self, rollout: Rollout, generator: Optional[torch.Generator] = None) -> dict:
        """Every gradient of ``updates`` (defined by the rules that run asynchronously) stepped
        here, in turn; the mean of their statistics. PPO has its own."""
        stats = []
        for s in self.updates(rollout, generator):
            self.step()
            stats.append(s)
        return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}

    def step(self) -> None:
        """The optimiser steps the gradients in ``params``' ``.grad``."""
        self.optimizer.step()

    def clip_gradients(self) -> None:
        """Gradient-norm clipping at ``max_grad_norm`` (0: off)."""
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)

    def weights(self) -> list[torch.Tensor]:
        """What a copy of the rule needs to compute the same gradients: the model's tensors."""
        return model_tensors(self.model)

    def memory_size(self) -> Optional[tuple[int, int]]:
        """(transitions, bytes) of the replay memory this rule keeps with ``memory=True``."""
        return None

    def share_memory(self) -> "Rule":
        """Model and optimiser statistics into shared memory (Hogwild workers step them)."""
        self.model.share_memory()
        self.optimizer.share_memory()
        return self

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
