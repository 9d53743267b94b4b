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

Every gradient is checked before it is applied (``checked``): a non-finite loss or gradient
norm raises :class:`NonFinite` (``nan_policy: stop``) or drops that update (``skip_update``:
stats ``skipped_updates``, nothing applied; ``max_skipped`` in a row raise), so the weights
never take a non-finite step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from contrl.errors import NonFinite
from contrl.storage.rollout import Rollout


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The gradients' global L2 norm, and (``max_norm`` > 0) the gradients scaled in place to at
    most ``max_norm``: ``nn.utils.clip_grad_norm_(foreach=True)``'s arithmetic, op for op (the
    same numbers), without its Python bookkeeping -- it cost as much as the arithmetic on these
    small networks (issue 17: 330 -> 190 us per minibatch of the HalfCheetah preset)."""
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What a copy of a model needs: its state dict's tensors (parameters and buffers), in order."""
    return list(model.state_dict(keep_vars=True).values())


class Rule:
    keeps_behaviour = False  # rollouts also keep what replay needs
    memory = None  # the replay memory of a rule that keeps one
    inputs = None  # ReplayInputs: how a replay rule's raw observations and rewards are normalised (its runner sets it)
    nan_policy, max_skipped = "stop", 10  # make_rule sets the run's

    def __init__(self, model: nn.Module, cfg, n_envs: int = 1, seq_len: int = 0, memory: bool = True):
        """``n_envs``: envs per update; ``seq_len``: training sequence length of a recurrent
        network; ``memory=False``: no replay memory (a learner whose workers keep their own)."""
        self.model, self.cfg, self.n_envs, self.seq_len = model, cfg, n_envs, seq_len
        self.params = list(model.parameters())
        self.optimizer = None  # set by the rule
        self.updates_done = self.skipped_in_a_row = 0

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
            if not s.get("skipped_updates"):
                self.step()
            stats.append(s)
        out = {key: sum(s.get(key, 0.0) for s in stats) / len(stats) for key in stats[0]}
        out["skipped_updates"] = sum(s.get("skipped_updates", 0.0) for s in stats)  # a count
        return out

    def step(self) -> None:
        """The optimiser steps the gradients in ``params``' ``.grad``."""
        self.optimizer.step()

    def checked(self, loss: torch.Tensor | float) -> bool:
        """After ``loss.backward()``: clip the gradient norm at ``max_grad_norm`` (0: off) and check
        the loss and the norm. True: apply the update. Non-finite: ``drop`` it (the gradients
        cleared) and return False, or raise."""
        norm = clip_grad_norm([p.grad for p in self.params if p.grad is not None], self.cfg.max_grad_norm)
        self.updates_done += 1
        loss_ok = math.isfinite(loss.item() if isinstance(loss, torch.Tensor) else loss)
        if loss_ok and math.isfinite(norm.item()):
            self.skipped_in_a_row = 0
            return True
        what = "gradient" if loss_ok else "loss"
        for p in self.params:
            p.grad = None
        self.drop(f"a non-finite {what} in update {self.updates_done:,} (a learning rate too high for the task? "
                  f"lower lr, or drop such updates with --set nan_policy=skip_update)")
        return False

    def drop(self, what: str) -> dict:
        """An update that cannot be applied (``what``: why): raise :class:`NonFinite`, or with
        ``nan_policy: skip_update`` count it and return its statistics (past ``max_skipped`` in a
        row: raise)."""
        if self.nan_policy != "skip_update":
            raise NonFinite(what)
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= self.max_skipped:
            raise NonFinite(f"{self.skipped_in_a_row} updates in a row were skipped (nan_policy skip_update; "
                            f"the last: {what})")
        return {"skipped_updates": 1.0}

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
