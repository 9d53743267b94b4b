"""Optimisers whose statistics can live in shared memory (A3C's shared Adam / RMSprop).

Both keep every state tensor allocated from the start, so ``share_memory()`` can move them to
shared memory before worker processes are started; the optimiser then travels to every worker
with its parameters (torch pickles shared tensors as handles), and all workers step the same
statistics (Hogwild: no lock, as in Mnih et al. 2016). One process works the same way with the
tensors unshared (A2C).

- :class:`RMSpropTF`: TensorFlow's RMSprop, as the A2C/A3C papers and Stable-Baselines used it:
  the epsilon inside the square root, ``p -= lr * g / sqrt(v + eps)``, and ``v`` starting at 1.
- :class:`RMSpropTorch`: ``torch.optim.RMSprop``'s (what Stable-Baselines3's A2C steps by
  default): ``p -= lr * g / (sqrt(v) + eps)``, ``v`` starting at 0.
- :class:`Adam`: Kingma & Ba with bias correction; the step count is a shared tensor too. Shared
  (Hogwild), each element's step is clipped to the largest one consistent statistics can give,
  which bounds the steps torn statistics give; in one process (A2C, ACER, the Ray learner), where
  that clip is never reached, the step is torch's fused Adam kernel on the same statistics (one
  pass instead of eleven: 1.1 -> 0.24 ms on the 137k parameters of the LunarLander preset).

And :class:`FusedAdam` (PPO's): ``torch.optim.Adam(fused=True)``, stepped straight through its
fused kernel.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class _SharedStatsOptimizer:
    state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params = list(params)
        self.param_groups = [{"lr": lr}]  # as torch's optimisers: the learning rate in force, per process
        self.state = {name: [self._init(name, p) for p in self.params] for name in self.state_names}
        self.state["step"] = torch.zeros((), dtype=torch.float64)

    def _init(self, name: str, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.contiguous_format)

    # -- sharing ----------------------------------------------------------------------------
    def share_memory(self) -> "_SharedStatsOptimizer":
        for name in self.state_names:
            for t in self.state[name]:
                t.share_memory_()
        self.state["step"].share_memory_()
        return self

    def is_shared(self) -> bool:
        return self.state["step"].is_shared() and all(t.is_shared() for n in self.state_names for t in self.state[n])

    # -- stepping ---------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @property
    def steps(self) -> int:
        return int(self.state["step"].item())

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is None for p in self.params):
            raise RuntimeError("every parameter needs a gradient before step()")
        self.state["step"] += 1
        self._update([p.grad for p in self.params])

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = {name: [t.detach().clone() for t in self.state[name]] for name in self.state_names}
        out["step"] = self.state["step"].detach().clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Copy into the existing (possibly shared) tensors."""
        for name in self.state_names:
            if len(state[name]) != len(self.state[name]):
                raise ValueError(f"optimizer state '{name}' has {len(state[name])} tensors, expected {len(self.state[name])}")
            for dst, src in zip(self.state[name], state[name]):
                dst.copy_(src)
        self.state["step"].copy_(state["step"])


class RMSpropTF(_SharedStatsOptimizer):
    """v <- alpha * v + (1 - alpha) * g^2;  p <- p - lr * g / sqrt(v + eps);  v starts at 1."""

    state_names = ("square_avg",)

    def __init__(self, params, lr: float, alpha: float = 0.99, eps: float = 1e-5):
        self.alpha, self.eps = alpha, eps
        super().__init__(params, lr)

    def _init(self, name, p):
        return torch.ones_like(p, memory_format=torch.contiguous_format)

    def _update(self, grads) -> None:
        sq = self.state["square_avg"]
        torch._foreach_mul_(sq, self.alpha)
        torch._foreach_addcmul_(sq, grads, grads, value=1 - self.alpha)
        torch._foreach_addcdiv_(self.params, grads, self._denom(sq), value=-self.lr)

    def _denom(self, sq) -> list:
        denom = torch._foreach_add(sq, self.eps)
        torch._foreach_sqrt_(denom)
        return denom


class RMSpropTorch(RMSpropTF):
    """v <- alpha * v + (1 - alpha) * g^2;  p <- p - lr * g / (sqrt(v) + eps);  v starts at 0
    (``torch.optim.RMSprop`` without momentum or centring: Stable-Baselines3's A2C default)."""

    def _init(self, name, p):
        return torch.zeros_like(p, memory_format=torch.contiguous_format)

    def _denom(self, sq) -> list:
        denom = torch._foreach_sqrt(sq)
        torch._foreach_add_(denom, self.eps)
        return denom


class Adam(_SharedStatsOptimizer):
    """Adam with bias correction; ``eps`` outside the square root as in the paper."""

    state_names = ("exp_avg", "exp_avg_sq")
    fused_kernel = True  # False: the foreach step unshared too (what Hogwild's takes, to float32 rounding the same)

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas, self.eps = betas, eps
        super().__init__(params, lr)
        self.fused = self.fused_kernel and hasattr(torch, "_fused_adam_")  # one process: no clip needed

    def share_memory(self) -> "Adam":
        self.fused = False  # Hogwild: the clipped step (torn statistics)
        return super().share_memory()

    def _update(self, grads) -> None:
        b1, b2 = self.betas
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        if self.fused:
            try:  # the same formula; reads the step count the caller advanced
                torch._fused_adam_(self.params, grads, m, v, [], [self.state["step"]] * len(self.params),
                                   amsgrad=False, lr=self.lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=self.eps,
                                   maximize=False, grad_scale=None, found_inf=None)
                return
            except TypeError:  # another torch's kernel signature: the foreach path from now on
                self.fused = False
        t = float(self.state["step"])
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        ratio = torch._foreach_div(m, denom)
        # |m / sqrt(v)| has a bound for any gradients (Cauchy-Schwarz over the two moving averages),
        # so consistent statistics are never clipped here; Hogwild workers stepping the shared
        # statistics at once can leave a torn (m, v) pair (m with another worker's gradient, v
        # without it) whose ratio has no bound -- early in a run, one such step was enough to
        # send weights to inf. Clipping to the bound keeps every step an Adam-sized one.
        bound = self.ratio_bound(t)
        torch._foreach_clamp_min_(ratio, -bound)
        torch._foreach_clamp_max_(ratio, bound)
        torch._foreach_add_(self.params, ratio, alpha=-self.lr / (1 - b1**t))

    def ratio_bound(self, t: float) -> float:
        """The largest |m_t / (sqrt(v_t / (1 - b2^t)) + eps)| consistent statistics can give after t
        steps: (1 - b1) sqrt((1 - b2^t) / (1 - b2)) sqrt(sum_{k<t} (b1^2 / b2)^k), with a margin
        for rounding."""
        b1, b2 = self.betas
        q = b1 * b1 / b2
        terms = (1 - q**t) / (1 - q) if q != 1 else t
        return (1 - b1) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(terms) * (1 + 1e-4)


def make_optimizer(name: str, params, lr: float, alpha: float, eps: float):
    if name in ("rmsprop", "rmsprop_torch"):
        return (RMSpropTF if name == "rmsprop" else RMSpropTorch)(params, lr, alpha=alpha, eps=eps)
    return Adam(params, lr, eps=eps)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` -- the same state, state dict and numbers (tested) -- whose
    ``step()`` calls the fused kernel on lists it keeps, and ``zero_grad()`` sets the gradients to
    None directly: torch's own ``step`` wraps the kernel in Python (grouping tensors by device,
    profiler and compiler hooks) that cost more than the kernel on these small networks (issue 17:
    535 -> 234 us per PPO minibatch of the HalfCheetah preset). Anything the shortcut does not
    cover (several parameter groups, amsgrad, a closure, a parameter without a gradient, the
    first step, which creates the state) goes through torch's ``step``."""

    def __init__(self, params, lr: float, eps: float = 1e-8):
        super().__init__(params, lr=lr, eps=eps, fused=True)
        self._direct = hasattr(torch, "_fused_adam_")
        self._lists = None  # (params, exp_avgs, exp_avg_sqs, steps), once the state exists

    def _state_lists(self):
        if self._lists is None and len(self.param_groups) == 1:
            group = self.param_groups[0]
            params = group["params"]
            if group["amsgrad"] or group.get("decoupled_weight_decay") or any(p not in self.state for p in params):
                return None
            st = [self.state[p] for p in params]
            self._lists = params, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [s["step"] for s in st]
        return self._lists

    def load_state_dict(self, state_dict: dict) -> None:
        self._lists = None  # new state tensors
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._lists = None
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        lists = self._state_lists() if self._direct and closure is None else None
        if lists is None:
            return super().step(closure)
        params, exp_avgs, exp_avg_sqs, steps = lists
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return super().step()
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)  # what torch's step does before the kernel
        try:
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=group["maximize"], grad_scale=None, found_inf=None)
        except TypeError:  # another torch's kernel signature: torch's own step from now on
            torch._foreach_sub_(steps, 1)
            self._direct = False
            return super().step()
        return None
