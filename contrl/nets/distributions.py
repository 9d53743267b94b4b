"""Lightweight action distributions (no argument validation on the hot path).

Sampling takes an explicit ``torch.Generator`` so a run's randomness is one saved state.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_LOG_2PI = math.log(2 * math.pi)


class Categorical:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probs

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits)
        u = torch.rand(self.logits.shape, generator=generator).clamp_(1e-20, 1.0)
        return (self.logits - torch.log(-torch.log(u))).argmax(-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)

    def kl(self, other: "Categorical") -> torch.Tensor:
        return (self.logits.exp() * (self.logits - other.logits)).sum(-1)

    def params(self) -> torch.Tensor:
        """The distribution as one tensor ``[..., A]`` (normalised log-probs), for replay."""
        return self.logits

    @staticmethod
    def from_params(params: torch.Tensor) -> "Categorical":
        return Categorical(params)

    @staticmethod
    def of_probs(probs: torch.Tensor, eps: float = 1e-8) -> "Categorical":
        """The distribution as a function of its probabilities themselves (``log p``, not
        renormalised), so that gradients taken with respect to ``probs`` are those of the
        formulas in p (ACER's trust region is defined in that space)."""
        d = Categorical.__new__(Categorical)
        d.logits = torch.log(probs.clamp_min(eps))
        return d


class DiagGaussian:
    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator)
        return self.mean + noise * self.log_std.exp()

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * _LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def kl(self, other: "DiagGaussian") -> torch.Tensor:
        var_ratio = torch.exp(2 * (self.log_std - other.log_std))
        t = ((self.mean - other.mean) * torch.exp(-other.log_std)).pow(2)
        return 0.5 * (var_ratio + t - 1 - 2 * (self.log_std - other.log_std)).sum(-1)

    def params(self) -> torch.Tensor:
        """The distribution as one tensor ``[..., 2A]`` (mean, log-std), for replay."""
        return torch.cat([self.mean, self.log_std], -1)

    @staticmethod
    def from_params(params: torch.Tensor) -> "DiagGaussian":
        mean, log_std = params.chunk(2, -1)
        return DiagGaussian(mean, log_std)


class NumpySampler:
    """What ``dist(pi_out).sample(generator)`` and ``log_prob`` of it give, on numpy distribution
    parameters (the acting loop's numpy forward): ``sampler(pi_out, generator) -> (actions,
    log-probs)``. Categorical when ``log_std`` is None (Gumbel-max), else the diagonal Gaussian
    with that log-std (its exponentials taken once, here: build one per rollout). The noise is
    drawn from the generator by the same torch calls as the torch path, so a run's random stream
    is the same either way; the results equal the torch path's to float32 rounding (tested)."""

    def __init__(self, log_std: np.ndarray | None):
        self.log_std = log_std
        self._noise: dict = {}  # shape -> (tensor, its numpy view): the noise is drawn in place
        if log_std is not None:
            self.std = np.exp(log_std)
            # log N(a; mu, std) = -|z|^2 / 2 - sum(log std) - A log(2 pi) / 2, with z = (a - mu) / std,
            # which is the noise drawn: the noise gives the log-prob without going through the action
            self.logp0 = -float(log_std.sum(dtype=np.float64)) - 0.5 * _LOG_2PI * log_std.shape[-1]

    def _buffer(self, shape: tuple) -> tuple[torch.Tensor, np.ndarray]:
        buf = self._noise.get(shape)
        if buf is None:
            t = torch.empty(shape)
            buf = self._noise[shape] = (t, t.numpy())
        return buf

    def params(self, pi_out: np.ndarray) -> np.ndarray:
        """What ``dist(pi_out).params()`` gives (ACER's stored behaviour policy): the normalised
        log-probs, or the mean and log-std side by side."""
        if self.log_std is None:
            m = pi_out.max(-1, keepdims=True)
            return pi_out - (m + np.log(np.exp(pi_out - m).sum(-1, keepdims=True)))
        return np.concatenate([pi_out, np.broadcast_to(self.log_std, pi_out.shape)], -1)

    def __call__(self, pi_out: np.ndarray, generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        # torch.rand / torch.randn are uniform_ / normal_ on a new tensor: drawing into a kept one
        # takes the same numbers from the generator without allocating (and freeing) a tensor per step
        t, noise = self._buffer(pi_out.shape)
        if self.log_std is None:
            m = pi_out.max(-1, keepdims=True)
            logits = pi_out - (m + np.log(np.exp(pi_out - m).sum(-1, keepdims=True)))  # normalised log-probs
            t.uniform_(generator=generator).clamp_(1e-20, 1.0)
            actions = (logits - np.log(-np.log(noise))).argmax(-1)
            return actions, np.take_along_axis(logits, actions[..., None], -1)[..., 0]
        t.normal_(generator=generator)
        return pi_out + noise * self.std, np.add.reduce(noise * noise, -1) * -0.5 + self.logp0
