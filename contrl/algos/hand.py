"""The on-policy losses' derivatives by hand, for the rules that skip autograd (issue 17).

A minibatch of 64-256 samples through these small networks spent most of its update in
autograd's per-node overhead, not in arithmetic. PPO and A2C know their loss's derivatives with
respect to what the network outputs (distribution parameters, values, the Gaussian's log-std);
they compute them here, in numpy float32 on the [B] and [B, A] arrays (a numpy call on 64
numbers costs a fraction of a torch call's dispatch), and the network back-propagates them by
hand (``ActorCritic.backward_into``: the matmuls autograd would run). tests/test_ppo.py and
tests/test_a2c.py compare every gradient with autograd's.

The formulas, B samples:
- Gaussian: log pi = sum_i -z_i^2/2 - log sigma_i - log(2 pi)/2 with z = (a - mu)/sigma;
  d log pi/d mu = z/sigma, d log pi/d log sigma = z^2 - 1; entropy sum_i log sigma_i + (1 +
  log 2 pi)/2, the same for every sample, d/d log sigma = 1 per dimension;
- categorical (l the normalised log-probs, p = exp l): d log pi(a)/d logits = onehot(a) - p,
  H = -sum p l, d H/d logits = -p (l + H);
- value: d(c_v mean (V - R)^2)/dV = 2 c_v (V - R)/B.
"""

from __future__ import annotations

import numpy as np
import torch

from contrl.nets.distributions import _LOG_2PI

_sum = np.add.reduce  # ndarray.sum / .mean without their Python wrappers (several us each)


def mean(x: np.ndarray):
    return _sum(x, None) / x.size


def takes_hand_path(rule, model) -> bool:
    """The rule allows it (``hand_backward``, a class attribute: False takes autograd's path) and
    the network has a hand-written backward for actions of at most one dimension."""
    return rule.hand_backward and getattr(model, "hand_backward", False) and len(model.act_shape) <= 1


def normalized(adv: np.ndarray) -> np.ndarray:
    """(A - mean) / (std + 1e-8), std with one degree of freedom as torch's ``std()``."""
    centred = adv - mean(adv)
    return centred / (np.sqrt(_sum(centred * centred) / (adv.size - 1)) + np.float32(1e-8))


def forward(model, batch, normalize_advantage: bool) -> tuple:
    """What both rules start from: the network run on the batch keeping what the backward needs;
    returns (``PolicyTerms``, values, advantages (normalised if asked), cache), numpy float32."""
    pi_t, values_t, cache = model.forward_cached(batch.obs)
    values = values_t.numpy()
    adv = batch.advantages.numpy()
    if normalize_advantage and values.shape[0] > 1:
        adv = normalized(adv)
    return PolicyTerms(model, pi_t.numpy(), batch.actions), values, adv, cache


class PolicyTerms:
    """log pi(a|s) per sample and the mean entropy from the policy head's output (numpy), and
    the derivatives of a loss that reads them: ``grads(g_logp, ent_coef)``."""

    def __init__(self, model, pi_out: np.ndarray, actions: torch.Tensor):
        B = self.B = pi_out.shape[0]
        self.discrete = model.discrete
        if self.discrete:
            top = pi_out.max(-1, keepdims=True)
            self.logits = pi_out - (top + np.log(_sum(np.exp(pi_out - top), -1, keepdims=True)))  # normalised
            self.probs = np.exp(self.logits)
            self.taken = actions.numpy().astype(np.int64)[:, None]
            self.logp = np.take_along_axis(self.logits, self.taken, -1)[:, 0]
            self.ent = -_sum(self.probs * self.logits, -1)
            self.entropy = mean(self.ent)
        else:
            log_std = model.log_std.detach().numpy()
            self.inv_std = np.exp(-log_std)
            self.z = (actions.numpy().reshape(B, -1) - pi_out) * self.inv_std
            self.logp = _sum(-0.5 * (self.z * self.z) - log_std - np.float32(0.5 * _LOG_2PI), -1)
            self.entropy = _sum(log_std + np.float32(0.5 * (1.0 + _LOG_2PI)))  # the same for every sample

    def grads(self, g_logp: np.ndarray, ent_coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """dL/d(policy head output) ``[B, A]`` and dL/d(log-std) ``[A]`` (None: categorical) of
        L = (a loss with dL/d log pi = ``g_logp`` per sample) - ent_coef * mean entropy."""
        if self.discrete:
            g = g_logp[:, None]
            g_pi = self.probs * ((ent_coef / self.B) * (self.logits + self.ent[:, None]) - g)
            np.put_along_axis(g_pi, self.taken, np.take_along_axis(g_pi, self.taken, -1) + g, -1)
            return torch.from_numpy(g_pi), None
        gz = g_logp[:, None] * self.z
        g_log_std = _sum(gz * self.z - g_logp[:, None], 0) - np.float32(ent_coef)
        return torch.from_numpy(gz * self.inv_std), torch.from_numpy(g_log_std)


def value_terms(values: np.ndarray, returns: np.ndarray, vf_coef: float) -> tuple:
    """(mean (V - R)^2, d(vf_coef * that)/dV) -- the unclipped value loss."""
    err = values - returns
    return mean(err * err), err * np.float32(2.0 * vf_coef / values.shape[0])
