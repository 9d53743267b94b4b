"""Run logging: progress.csv (one row per update or per ``log_every`` steps), episodes.csv (one
row per episode), messages.log (evaluations, worker starts, failures and restarts), TensorBoard
events, and a live progress line on the terminal."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Optional

PROGRESS_FIELDS = [
    "step", "wall_s", "cpu_s", "peak_mem_mb", "energy_wh", "episode_return", "episode_length", "episodes", "policy_loss", "value_loss",
    "entropy", "approx_kl", "clip_fraction", "explained_variance",
    "q_loss", "rho", "kl_avg", "trust_region_active", "replay_updates",  # acer
    "skipped_updates",  # nan_policy skip_update: updates dropped so far
    "lr", "steps_per_s",
    "eval_return", "eval_return_std",
]


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


class StatsWindow:
    """Means of update statistics between two progress rows, and the steps/s over them."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, stats: dict, steps: int, count: int = 1) -> None:
        """``stats`` holds means over ``count`` updates."""
        for k, v in stats.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v * count
        self.n += count
        self.steps += steps

    def means(self) -> dict:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}

    def steps_per_s(self) -> float:
        return self.steps / max(time.perf_counter() - self.t0, 1e-9)


class Logger:
    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True, quiet: bool = False,
                 resume_step: Optional[int] = None):
        """``resume_step``: continue a run whose checkpoint is at that step; rows logged after it
        (by the interrupted process) are dropped so the files match an uninterrupted run."""
        self.run_dir = Path(run_dir)
        self.total = total_steps
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        resume = resume_step is not None
        if resume:
            for name in ("progress.csv", "episodes.csv"):
                _truncate_after(self.run_dir / name, resume_step)
        mode = "a" if resume else "w"
        new_p = not (resume and (self.run_dir / "progress.csv").exists())
        new_e = not (resume and (self.run_dir / "episodes.csv").exists())
        self._mf = open(self.run_dir / "messages.log", mode)
        self._pf = open(self.run_dir / "progress.csv", mode, newline="")
        self._ef = open(self.run_dir / "episodes.csv", mode, newline="")
        self._pw = csv.DictWriter(self._pf, PROGRESS_FIELDS)
        self._ew = csv.writer(self._ef)
        if new_p:
            self._pw.writeheader()
        if new_e:
            self._ew.writerow(["step", "wall_s", "env", "return", "length"])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None
        self._last_print = 0.0

    def episodes(self, step: int, wall: float, episodes: list) -> None:
        """Episodes (env index, return, length) that ended at ``step``."""
        self.episodes_at([(step, env_i, ret, length) for env_i, ret, length in episodes], wall)

    def episodes_at(self, rows: list, wall: float) -> None:
        """Episodes as (step, env index, return, length)."""
        for step, env_i, ret, length in rows:
            self._ew.writerow([step, f"{wall:.3f}", env_i, f"{ret:.6g}", length])
            if self.tb is not None:
                self.tb.add_scalar("episode/return", ret, step)
                self.tb.add_scalar("episode/length", length, step)

    def progress(self, row: dict) -> None:
        self._pw.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in PROGRESS_FIELDS})
        self._pf.flush()
        self._ef.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    group = "eval" if k.startswith("eval") else ("rollout" if k.startswith("episode") else "train")
                    self.tb.add_scalar(f"{group}/{k}", v, row["step"])

    def status(self, step: int, steps_per_s: float, recent_return: Optional[float], force: bool = False,
               cost: Optional[dict] = None) -> None:
        if self.quiet:
            return
        now = time.time()
        if not force and now - self._last_print < (0.5 if self.tty else 15.0):
            return
        self._last_print = now
        pct = 100.0 * step / self.total
        eta = max(0, self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        ret = f"{recent_return:9.2f}" if recent_return is not None else "        -"
        line = (f"steps {step:>10,}/{self.total:,} ({pct:5.1f}%) | {steps_per_s:7,.0f} steps/s | "
                f"return {ret} (last 100) | ETA {_fmt_time(eta)}")
        if cost:
            line += f" | {cost['cpu_s']:,.0f} CPU-s, {cost['peak_mem_mb']:,.0f} MiB peak"
            if cost.get("energy_wh") is not None:
                line += f", ~{cost['energy_wh']:.2f} Wh"
        if self.tty:
            sys.stderr.write("\r" + line + "\033[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        """A line for the terminal (unless quiet) and, time-stamped, for messages.log."""
        if not self._mf.closed:
            self._mf.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self._mf.flush()
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def detail(self, text: str) -> None:
        """Text for messages.log only (a traceback behind a one-line error)."""
        if not self._mf.closed:
            self._mf.write(text.rstrip("\n") + "\n")
            self._mf.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")
        for f in (self._pf, self._ef, self._mf, self.tb):
            try:  # after a failed write (a full disk) closing fails too: the error already said so
                if f is not None and not getattr(f, "closed", False):
                    f.close()
            except OSError:
                pass
