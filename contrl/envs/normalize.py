"""Running statistics for observation normalisation and reward scaling (saved in checkpoints),
and the views of them that asynchronous workers and Ray actors use."""

from __future__ import annotations

import math

import numpy as np


class RunningMeanStd:
    """Mean and variance over all samples seen (parallel Welford update), float64."""

    def __init__(self, shape=(), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.shape[0] == 1:  # one env (the acting loop's MuJoCo case): see add_one
            self.add_one(x[0])
            return
        x = x.astype(np.float64, copy=False)
        self.merge(x.mean(axis=0), x.var(axis=0), x.shape[0])

    def add_one(self, row) -> None:
        """``merge(row, 0, 1)``, the fold of one sample, in six array operations instead of a
        dozen plus two reductions (the acting loop does it at every step; issue 17). Equal to
        ``merge`` to float64 rounding (tested)."""
        total = self.count + 1.0
        delta = row - self.mean  # float64 (the statistics' type), whatever the row's float type
        step = delta / total
        self.mean = self.mean + step
        self.var = (self.var + delta * step) * (self.count / total)
        self.count = total

    def merge(self, b_mean: np.ndarray, b_var: np.ndarray, b_count: float) -> None:
        """Fold in the statistics of another sample (parallel algorithm of Chan et al.)."""
        if b_count <= 0:
            return
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    def load_state_dict(self, d: dict) -> None:
        self.mean = np.asarray(d["mean"], np.float64)
        self.var = np.asarray(d["var"], np.float64)
        self.count = float(d["count"])


class ObsNormalizer:
    """(obs - mean) / sqrt(var + eps), clipped; statistics update only while training."""

    def __init__(self, dim: int, clip: float):
        self.rms = RunningMeanStd((dim,))
        self.clip = clip

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8)
        return clip_to_float32(out, self.clip)


def clip_to_float32(x: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(x, -bound, bound).astype(np.float32)`` in two ufunc calls (``np.clip``'s Python
    wrapper costs more than the clipping of a few numbers; the acting loop calls this twice per
    step). Same values, NaN included."""
    out = np.maximum(x, -bound)
    return np.minimum(out, bound, out=np.empty(out.shape, np.float32), casting="same_kind")


class RewardScaler:
    """Divide rewards by the running std of the discounted return (as SB3's VecNormalize)."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0):
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(n_envs, np.float64)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[dones] = 0.0
        # the scale as a float64 scalar (math.sqrt: the same number as np.sqrt, at a tenth of the cost)
        return clip_to_float32(rewards / np.float64(math.sqrt(self.rms.var + 1e-8)), self.clip)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "returns": self.returns.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.rms.load_state_dict(d["rms"])
        self.returns = np.asarray(d["returns"], np.float64)


class ReplayInputs:
    """How the raw observations and rewards a replay memory keeps become the network's inputs
    when they are learned from: normalised with the observation statistics and scaled with the
    reward scale in force *now*, not those of when they were collected."""

    def __init__(self, obs_norm: "ObsNormalizer | None", scaler: "RewardScaler | None"):
        self.obs_norm, self.scaler = obs_norm, scaler

    def obs(self, x):
        """Raw observations ``[..., D]`` (a tensor) -> normalised."""
        if self.obs_norm is None:
            return x
        import torch

        return torch.from_numpy(self.obs_norm(x.reshape(-1, x.shape[-1]).numpy())).reshape(x.shape)

    def rewards(self, r):
        if self.scaler is None:
            return r
        return (r / math.sqrt(float(self.scaler.rms.var) + 1e-8)).clamp(-self.scaler.clip, self.scaler.clip)


# -- observation statistics shared by asynchronous workers -------------------------------------
# A float64 table [workers + 1, 2 * D + 1] (in shared memory): row 0 holds the statistics the run
# started from (initial or resumed), row i + 1 everything worker i has seen (mean, var, count).
# Each row has one writer, so no lock is needed (a worker killed mid-write cannot block the
# others); the statistics in force are the merge of all rows.
def rms_to_row(rms: RunningMeanStd, out: np.ndarray) -> None:
    d = rms.mean.shape[0]
    out[:d], out[d:2 * d], out[2 * d] = rms.mean, rms.var, rms.count


def rms_from_row(row: np.ndarray) -> RunningMeanStd:
    d = (row.shape[0] - 1) // 2
    rms = RunningMeanStd((d,))
    rms.mean, rms.var, rms.count = row[:d].copy(), row[d:2 * d].copy(), float(row[2 * d])
    return rms


def merged_obs_stats(table: np.ndarray) -> RunningMeanStd:
    rms = rms_from_row(table[0])
    for row in table[1:]:
        part = rms_from_row(row)
        rms.merge(part.mean, part.var, part.count)
    return rms


class WorkerObsNormalizer(ObsNormalizer):
    """A Hogwild worker's view of the shared observation statistics.

    Between two syncs it normalises with (all statistics at the last sync + what it has seen
    since); ``sync()`` publishes what it has seen in its own row and takes the merge of all rows,
    once per segment, so all workers and the evaluator share one normaliser.
    """

    def __init__(self, table, row: int, dim: int, clip: float):
        super().__init__(dim, clip)
        self.table, self.row = table.numpy(), row
        self.mine = rms_from_row(self.table[row])  # a restarted worker continues its row
        self.sync()

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if update:
            self.mine.update(obs)
        return super().__call__(obs, update)

    def sync(self) -> None:
        rms_to_row(self.mine, self.table[self.row])
        self.rms = merged_obs_stats(self.table)


class SeenObsNormalizer(ObsNormalizer):
    """A Ray actor's normaliser: the learner's statistics as of the request, plus what the actor
    has seen since; ``seen`` (what it returns to the learner) is only the latter."""

    def begin(self, stats: dict) -> None:
        self.rms.load_state_dict(stats)
        self.seen = RunningMeanStd(self.rms.mean.shape, epsilon=0.0)

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if update:
            self.seen.update(obs)
        return super().__call__(obs, update)
