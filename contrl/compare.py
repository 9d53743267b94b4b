"""``contrl compare``: several algorithms x seeds on one environment, and what it takes to get there.

Each algorithm x seed is one ``contrl train`` process in ``OUT/NAME-sSEED`` (``NAME-lstm`` runs
the algorithm with ``--net lstm``), up to ``jobs`` at a time, all evaluated at the same 20 points
of the budget. Re-running the same command skips runs that are finished and resumes the others
(an interrupted run, or one with fewer steps than asked) from their latest checkpoint.

The tables (``compare.md``, ``compare.csv``; one row per run in ``runs.csv``) give per algorithm
the final evaluation (mean and std over seeds), its interquartile mean (IQM: the mean of the
middle 50% of seeds, as rliable) with a 95% percentile-bootstrap confidence interval over seeds,
the env steps, wall-seconds and CPU-seconds each seed took to first reach the reward threshold
at a periodic evaluation (the median over the seeds that reached it, and how many did), and
steps/s. Plots: evaluation return vs env steps and vs wall-seconds, the mean over seeds with a
95% bootstrap band.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from contrl.config import ALGOS
from contrl.errors import ContrlError

EVAL_POINTS = 20


def iqm(x) -> float:
    """Interquartile mean: drop the lowest and highest 25% (``int(0.25 n)`` each side), average the rest
    (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(x, dtype=float))
    cut = int(0.25 * len(x))
    return float(x[cut:len(x) - cut].mean())


def bootstrap_ci(x, statistic: Callable = iqm, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the values ``x`` (resampled with replacement)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    stats = np.array([statistic(x[i]) for i in idx])
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def parse_algos(text: str) -> list[tuple[str, str, Optional[str]]]:
    """'ppo,ppo-lstm,acer' -> [(name, algo, net)]."""
    out = []
    for name in [a.strip() for a in text.split(",") if a.strip()]:
        algo, net = (name[:-5], "lstm") if name.endswith("-lstm") else (name, None)
        if algo not in ALGOS:
            raise ContrlError(f"unknown algorithm '{name}' in --algos; use {', '.join(ALGOS)} or NAME-lstm "
                              f"(e.g. ppo,ppo-lstm,a2c)")
        out.append((name, algo, net))
    if not out:
        raise ContrlError("--algos is empty; give e.g. --algos ppo,a2c,acer")
    if len({n for n, _, _ in out}) != len(out):
        raise ContrlError(f"--algos lists an algorithm twice: {text}")
    return out


def _run_state(run: Path, steps: int) -> str:
    summary = run / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text())["steps"] >= steps:
                return "done"
        except (json.JSONDecodeError, KeyError):
            pass
    if (run / "checkpoints" / "latest.pt").is_file() and (run / "config.json").is_file():
        return "resume"
    return "new"


def _curve(run: Path) -> list[tuple[int, float, float, float]]:
    """(step, wall_s, cpu_s, eval_return) of each periodic evaluation."""
    with open(run / "progress.csv", newline="") as f:
        return [(int(r["step"]), float(r["wall_s"]), float(r.get("cpu_s") or "nan"), float(r["eval_return"]))
                for r in csv.DictReader(f) if r.get("eval_return")]


def _first_reach(curve: list, threshold: Optional[float]):
    if threshold is None:
        return None
    for step, wall, cpu, ret in curve:
        if ret >= threshold:
            return step, wall, cpu
    return None


def compare(env: str, algos: str, steps: int, seeds: int, jobs: int = 1, out: Optional[str | Path] = None,
            env_kwargs: Optional[list[str]] = None, threshold: Optional[float] = None,
            log: Callable[[str], None] = print) -> dict:
    """Run (or complete) every algorithm x seed, then write the tables and plots; returns the table rows."""
    from contrl.envs.make import make_env

    specs = parse_algos(algos)
    if steps < 1 or seeds < 1 or jobs < 1:
        raise ContrlError(f"--steps, --seeds and --jobs must be >= 1, got {steps}, {seeds}, {jobs}")
    env_kwargs = list(env_kwargs or [])
    from contrl.config import parse_assignments

    probe = make_env(env, parse_assignments(env_kwargs, "--env-kwargs"))  # a bad env fails here, once
    if threshold is None and probe.spec is not None:
        threshold = probe.spec.reward_threshold
    probe.close()
    out = Path(out) if out is not None else Path("runs") / f"compare-{env.split('/')[-1].split(':')[-1]}"
    out.mkdir(parents=True, exist_ok=True)
    eval_every = max(1, steps // EVAL_POINTS)

    jobs_list, skipped = [], 0
    for name, algo, net in specs:
        for seed in range(seeds):
            run = out / f"{name}-s{seed}"
            state = _run_state(run, steps)
            if state == "done":
                skipped += 1
                continue
            if state == "resume":
                cmd = ["train", "--resume", str(run), "--steps", str(steps)]
            else:
                cmd = ["train", algo, "--env", env, "--steps", str(steps), "--seed", str(seed), "--out", str(run),
                       "--force", "--set", f"eval_every={eval_every}"]
                if net:
                    cmd += ["--net", net]
                if env_kwargs:
                    cmd += ["--env-kwargs", *env_kwargs]
            jobs_list.append((run, state, [sys.executable, "-m", "contrl", *cmd, "--quiet", "--no-tensorboard"]))
    log(f"compare: {len(specs)} algorithm(s) x {seeds} seed(s) on {env} -> {out}; "
        f"{skipped} finished run(s) skipped, {sum(s == 'resume' for _, s, _ in jobs_list)} to resume, "
        f"{sum(s == 'new' for _, s, _ in jobs_list)} to start, up to {jobs} at once")

    def launch(job) -> tuple[Path, int]:
        run, state, cmd = job
        run.mkdir(parents=True, exist_ok=True)
        with open(out / f"{run.name}.log", "a") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        log(f"  {run.name}: {'finished' if code == 0 else f'failed (exit {code})'}"
            f"{' (resumed)' if state == 'resume' else ''}")
        return run, code

    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(launch, jobs_list))
    failed = [run.name for run, code in results if code != 0]

    runs = []
    for name, algo, net in specs:
        for seed in range(seeds):
            run = out / f"{name}-s{seed}"
            if _run_state(run, steps) != "done":
                continue
            s = json.loads((run / "summary.json").read_text())
            curve = _curve(run)
            reach = _first_reach(curve, threshold)
            runs.append({"algo": name, "seed": seed, "final_return": s["final_eval"]["mean"] if "final_eval" in s
                         else (curve[-1][3] if curve else float("nan")),
                         "steps_to_threshold": reach[0] if reach else None,
                         "wall_s_to_threshold": reach[1] if reach else None,
                         "cpu_s_to_threshold": reach[2] if reach else None,
                         "steps_per_s": s["steps_per_s"], "wall_s": s["wall_s"], "cpu_s": s.get("cpu_s"),
                         "curve": curve})
    rows = _table(specs, runs, seeds, threshold)
    _write(out, env, steps, threshold, rows, runs)
    _plot(out, env, specs, runs)
    log(f"tables: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'runs.csv'}; plots: "
        f"{out / 'return_vs_steps.png'}, {out / 'return_vs_wall.png'}")
    if failed:
        raise ContrlError(f"{len(failed)} run(s) failed ({', '.join(failed)}; see {out}/NAME.log); the tables "
                          f"cover the finished ones; run the same command again to retry them")
    return {"rows": rows, "out": str(out)}


def _table(specs, runs, seeds, threshold) -> list[dict]:
    rows = []
    for name, _, _ in specs:
        rs = [r for r in runs if r["algo"] == name]
        if not rs:
            continue
        finals = [r["final_return"] for r in rs]
        lo, hi = bootstrap_ci(finals)
        reached = [r for r in rs if r["steps_to_threshold"] is not None]
        med = lambda key: float(np.median([r[key] for r in reached])) if reached else None  # noqa: E731
        rows.append({"algo": name, "seeds": len(rs), "final_mean": float(np.mean(finals)),
                     "final_std": float(np.std(finals)), "iqm": iqm(finals), "iqm_ci_low": lo, "iqm_ci_high": hi,
                     "reached": f"{len(reached)}/{len(rs)}" if threshold is not None else "",
                     "steps_to_threshold": med("steps_to_threshold"), "wall_s_to_threshold": med("wall_s_to_threshold"),
                     "cpu_s_to_threshold": med("cpu_s_to_threshold"),
                     "steps_per_s": float(np.mean([r["steps_per_s"] for r in rs]))})
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _write(out: Path, env: str, steps: int, threshold, rows: list, runs: list) -> None:
    th = f"{threshold:g}" if threshold is not None else "none"
    lines = [f"# compare on {env}, {steps:,} steps per run", "",
             f"Final return: deterministic evaluation at the end of each run. IQM: interquartile mean over seeds "
             f"with its 95% bootstrap interval. To threshold ({th}): the first periodic evaluation at or above it, "
             f"median over the seeds that reached it.", "",
             "| algorithm | seeds | final return (mean +- std) | IQM [95% CI] | reached threshold | env steps | "
             "wall-s | CPU-s | steps/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['seeds']} | {r['final_mean']:.1f} +- {r['final_std']:.1f} | "
                     f"{r['iqm']:.1f} [{r['iqm_ci_low']:.1f}, {r['iqm_ci_high']:.1f}] | {r['reached'] or '-'} | "
                     f"{_fmt(r['steps_to_threshold'], ',.0f')} | {_fmt(r['wall_s_to_threshold'], '.1f')} | "
                     f"{_fmt(r['cpu_s_to_threshold'], '.1f')} | {r['steps_per_s']:,.0f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]) if rows else ["algo"])
        w.writeheader()
        w.writerows(rows)
    with open(out / "runs.csv", "w", newline="") as f:
        keys = ["algo", "seed", "final_return", "steps_to_threshold", "wall_s_to_threshold", "cpu_s_to_threshold",
                "steps_per_s", "wall_s", "cpu_s"]
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows({k: r[k] for k in keys} for r in runs)


def _band(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray):
    """Mean over seeds on ``grid`` (each seed's curve interpolated) and a 95% bootstrap band of the mean."""
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    mean = ys.mean(0)
    bands = np.array([bootstrap_ci(ys[:, i], np.mean, n_resamples=2000) for i in range(len(grid))])
    return mean, bands[:, 0], bands[:, 1]


def _plot(out: Path, env: str, specs, runs: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for xi, xlabel, fname in ((0, "env steps", "return_vs_steps.png"), (1, "wall-seconds", "return_vs_wall.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, _, _ in specs:
            curves = [(np.array([c[xi] for c in r["curve"]]), np.array([c[3] for c in r["curve"]]))
                      for r in runs if r["algo"] == name and r["curve"]]
            if not curves:
                continue
            end = min(x[-1] for x, _ in curves)
            start = max(x[0] for x, _ in curves)
            grid = np.linspace(start, end, 50) if end > start else np.array([end])
            mean, lo, hi = _band(curves, grid)
            (line,) = ax.plot(grid, mean, label=f"{name} ({len(curves)} seeds)")
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("evaluation return")
        ax.set_title(f"{env}: mean over seeds, 95% bootstrap band")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
