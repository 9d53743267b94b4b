"""Learning curves from run folders: return vs steps and vs wall time.

Runs that share a configuration except the seed are one group, drawn as the mean over seeds
with a band of +- one standard deviation (curves are put on a common grid by interpolation).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from contrl.errors import ContrlError


def _read_episodes(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = run / "episodes.csv"
    if not path.is_file():
        raise ContrlError(f"'{run}' has no episodes.csv; give run folders made by contrl train")
    steps, walls, rets = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(float(row["step"]))
            walls.append(float(row["wall_s"]))
            rets.append(float(row["return"]))
    if not rets:
        raise ContrlError(f"'{run}' has no finished episodes yet; train longer before plotting")
    return np.array(steps), np.array(walls), np.array(rets)


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _group(run: Path) -> tuple[str, str]:
    """(key, label): runs whose configs are equal but for the seed share a key."""
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        return str(run), run.name
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("seed", None)
    kw = cfg.get("env_kwargs") or {}
    net = (cfg.get("net") or {}).get("type", "mlp")
    label = f"{cfg.get('algo')}{'-lstm' if net == 'lstm' else ''} {cfg.get('env')}" + (f" {kw}" if kw else "")
    return json.dumps(cfg, sort_keys=True), label


def plot_runs(runs: list[str | Path], out: str | Path, window: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in runs]
    for r in runs:
        if not r.is_dir():
            raise ContrlError(f"run folder '{r}' not found")
    groups: dict[str, list] = {}
    labels: dict[str, str] = {}
    for r in runs:
        key, labels[key] = _group(r)
        groups.setdefault(key, []).append(_read_episodes(r))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, curves in groups.items():
        label = labels[key]
        for ax, xi, xlabel in ((axes[0], 0, "environment steps"), (axes[1], 1, "wall time (s)")):
            xs = [c[xi] for c in curves]
            ys = [_smooth(c[2], window) for c in curves]
            name = label + (f" ({len(curves)} seeds)" if len(curves) > 1 else "")
            if len(curves) == 1:
                ax.plot(xs[0], ys[0], label=name)
            else:
                grid = np.linspace(max(x[0] for x in xs), min(x[-1] for x in xs), 200)
                ys_i = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])
                mean, std = ys_i.mean(0), ys_i.std(0)
                ax.plot(grid, mean, label=name)
                ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"episode return (mean of last {window})")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
