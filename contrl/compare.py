"""``contrl compare``: several algorithms x seeds on one environment, and what it takes to get there.

Each algorithm x seed is one ``contrl train`` process in ``OUT/NAME-sSEED`` (``NAME-lstm`` runs
the algorithm with ``--net lstm``), up to ``jobs`` at a time, each evaluated at 20 points of its
budget (``--steps``, or each algorithm's preset budget). ``--set`` and ``--preset`` apply to every
run. Re-running the same command skips runs that are finished and resumes the others (an
interrupted run, or one with fewer steps than asked) from their latest checkpoint; a run folder
trained with other settings is refused, not mixed in. Ctrl-C (or SIGTERM) stops compare and the
runs under way, each saving a checkpoint, and launches nothing more; the same command goes on.
``--max-failures K``: once K runs of an algorithm have ended below the threshold, its runs not
yet started are left out (a row that cannot pass a k-of-n criterion stops spending compute).

The tables (``compare.md``, ``compare.csv``; one row per run in ``runs.csv``) give per algorithm
the final evaluation (mean and std over seeds; the seeds whose final evaluation reaches the
threshold; the best periodic evaluation beside it), its interquartile mean (IQM: the mean of the
middle 50% of seeds, as rliable) with a 95% percentile-bootstrap confidence interval over seeds,
the env steps, wall-seconds and CPU-seconds each seed took to first reach the reward threshold
at a periodic evaluation (the median over the seeds that reached it, and how many did), and
steps/s. Plots: evaluation return vs env steps and vs wall-seconds, the mean over seeds with a
95% bootstrap band.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from contrl.config import ALGOS
from contrl.errors import ContrlError, Stopped

EVAL_POINTS = 20
# keys that do not change what a run learns: a run folder that differs only in these is reused
CADENCE = ("steps", "preset", "eval_every", "eval_episodes", "checkpoint_every", "log_every", "power_watts", "threads")


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


def parse_seeds(text) -> list[int]:
    """'5' -> 0..4; '10-14' -> 10..14; '0,3,7' -> [0, 3, 7] (ranges and lists mix: '0-2,9')."""
    if isinstance(text, int):
        text = str(text)
    text = str(text).strip()
    try:
        if text.isdigit():
            seeds = list(range(int(text)))
        else:
            seeds = []
            for part in [p.strip() for p in text.split(",")]:
                lo, dash, hi = part.partition("-")
                seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ContrlError(f"--seeds must be a count (5: seeds 0-4), a range (10-14; one seed: 7-7) or a list "
                          f"(0,3,7) of distinct seeds >= 0, got '{text}'")
    return seeds


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


def _same_settings(run: Path, cfg) -> None:
    """A run folder compare would skip or resume must have been trained with the settings asked for now."""
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ContrlError(f"{run}/config.json is missing or corrupted; delete {run} to run it again") from None
    want = cfg.to_dict()
    # a run key added since the run was made counts as the run's if it holds its default (what the run did)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    diff = [k for k in sorted(set(saved) | set(want)) if k not in CADENCE
            and saved.get(k, defaults.get(k)) != want.get(k)]
    if diff:
        k = diff[0]
        raise ContrlError(f"{run} was trained with other settings ({k}: {saved.get(k, defaults.get(k))!r}, asked now: "
                          f"{want.get(k)!r}"
                          f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); give another --out or delete "
                          f"{run}")


def _ended_below(run: Path, steps: int, threshold: Optional[float]) -> bool:
    """A finished run whose final evaluation is below the threshold."""
    if threshold is None or _run_state(run, steps) != "done":
        return False
    s = json.loads((run / "summary.json").read_text())
    return "final_eval" in s and s["final_eval"]["mean"] < threshold


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


def compare(env: str, algos: str, steps: Optional[int] = None, seeds=3, jobs: int = 1,
            out: Optional[str | Path] = None, env_kwargs: Optional[list[str]] = None,
            threshold: Optional[float] = None, sets: Optional[list[str]] = None, preset: Optional[str] = None,
            max_failures: Optional[int] = None, log: Callable[[str], None] = print) -> dict:
    """Run (or complete) every algorithm x seed, then write the tables and plots; returns the table rows.

    ``steps`` None: each algorithm's preset budget. ``seeds``: a count, or a range/list as
    ``parse_seeds`` reads. ``sets`` (KEY=VALUE) and ``preset`` apply to every run.
    ``max_failures``: once that many of an algorithm's runs have ended below the threshold, its
    runs not yet started are left out (the row cannot pass a k-of-n criterion any more; the same
    command without it runs them later)."""
    from contrl.config import build_config, parse_assignments
    from contrl.envs.make import make_env

    specs = parse_algos(algos)
    seeds = parse_seeds(seeds)
    if (steps is not None and steps < 1) or jobs < 1:
        raise ContrlError(f"--steps and --jobs must be >= 1, got {steps}, {jobs}")
    if max_failures is not None and max_failures < 1:
        raise ContrlError(f"--max-failures must be >= 1, got {max_failures}")
    env_kwargs, sets = list(env_kwargs or []), list(sets or [])
    kwargs, overrides = parse_assignments(env_kwargs, "--env-kwargs"), parse_assignments(sets)
    # each algorithm's settings, checked before anything runs (a bad --set fails here, once)
    cfgs = {name: build_config(algo, env, preset=preset, steps=steps, env_kwargs=kwargs, overrides=overrides, net=net)
            for name, algo, net in specs}
    budget = {name: cfg.steps for name, cfg in cfgs.items()}
    probe = make_env(env, kwargs)  # a bad env fails here, once
    given = threshold  # an explicit --threshold is part of the command that reproduces the table
    if threshold is None and probe.spec is not None:
        threshold = probe.spec.reward_threshold
    probe.close()
    if max_failures is not None and threshold is None:
        raise ContrlError(f"--max-failures counts runs that end below the threshold, and {env} has none; "
                          f"give --threshold")
    out = Path(out) if out is not None else Path("runs") / f"compare-{env.split('/')[-1].split(':')[-1]}"
    out.mkdir(parents=True, exist_ok=True)

    jobs_list, skipped, kinds = [], 0, {}
    for name, algo, net in specs:
        n, eval_every = budget[name], max(1, budget[name] // EVAL_POINTS)
        for seed in seeds:
            run = out / f"{name}-s{seed}"
            state = _run_state(run, n)
            if state != "new":
                _same_settings(run, build_config(algo, env, preset=preset, steps=n, seed=seed, env_kwargs=kwargs,
                                                 overrides={**overrides, "eval_every": eval_every}, net=net))
            if state == "done":
                skipped += 1
                continue
            kinds[run] = name
            if state == "resume":
                cmd = ["train", "--resume", str(run), "--steps", str(n)]
            else:
                cmd = ["train", algo, "--env", env, "--steps", str(n), "--seed", str(seed), "--out", str(run),
                       "--force", "--set", *sets, f"eval_every={eval_every}"]
                if net:
                    cmd += ["--net", net]
                if preset:
                    cmd += ["--preset", preset]
                if env_kwargs:
                    cmd += ["--env-kwargs", *env_kwargs]
            jobs_list.append((run, state, [sys.executable, "-m", "contrl", *cmd, "--quiet", "--no-tensorboard"]))
    log(f"compare: {len(specs)} algorithm(s) x {len(seeds)} seed(s) on {env} -> {out}; "
        f"{skipped} finished run(s) skipped, {sum(s == 'resume' for _, s, _ in jobs_list)} to resume, "
        f"{sum(s == 'new' for _, s, _ in jobs_list)} to start, up to {jobs} at once")

    stopping, running, lock = threading.Event(), set(), threading.Lock()
    below = {name: sum(_ended_below(out / f"{name}-s{seed}", budget[name], threshold) for seed in seeds)
             for name, _, _ in specs}  # finished runs below the threshold, per algorithm
    left_out: list[str] = []

    def launch(job) -> tuple[Path, Optional[int]]:
        run, state, cmd = job
        with lock:
            if max_failures is not None and below[kinds[run]] >= max_failures and not stopping.is_set():
                left_out.append(run.name)
                log(f"  {run.name}: not started ({below[kinds[run]]} run(s) of {kinds[run]} ended below "
                    f"{threshold:g}; --max-failures {max_failures})")
                return run, 0
        run.mkdir(parents=True, exist_ok=True)
        with open(out / f"{run.name}.log", "a") as f:
            with lock:
                if stopping.is_set():
                    return run, None
                # its own session: a Ctrl-C reaches compare alone, which passes one SIGINT on (a run
                # that got two would stop without saving its last steps)
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
                running.add(proc)
            code = proc.wait()
            with lock:
                running.discard(proc)
        stopped = code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
        if stopped:  # from outside: launch no more
            stopping.set()
        what = "finished" if code == 0 else "stopped, checkpoint kept" if stopped else f"failed (exit {code})"
        if max_failures is not None and code == 0 and _ended_below(run, budget[kinds[run]], threshold):
            with lock:
                below[kinds[run]] += 1
            what += f", below {threshold:g}"
        log(f"  {run.name}: {what}{' (resumed)' if state == 'resume' else ''}")
        return run, code

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    pool = ThreadPoolExecutor(jobs)
    # our own handlers, as the trainer's: a SIGINT inherited as ignored (a background job of a
    # script) must stop compare too
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        results = list(pool.map(launch, jobs_list))
    except KeyboardInterrupt:
        with lock:
            stopping.set()
            for proc in running:
                proc.send_signal(signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        raise Stopped("compare stopped; the runs under way saved checkpoints. Run the same command to go on "
                      "(finished runs are kept, the others resume)") from None
    finally:
        pool.shutdown(wait=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if stopping.is_set():
        raise Stopped("compare stopped: a run was interrupted from outside (its checkpoint is kept). Run the same "
                      "command to go on")
    failed = [run.name for run, code in results if code != 0]

    runs = []
    for name, algo, net in specs:
        for seed in seeds:
            run = out / f"{name}-s{seed}"
            if _run_state(run, budget[name]) != "done":
                continue
            s = json.loads((run / "summary.json").read_text())
            curve = _curve(run)
            reach = _first_reach(curve, threshold)
            final = s["final_eval"]["mean"] if "final_eval" in s else (curve[-1][3] if curve else float("nan"))
            runs.append({"algo": name, "seed": seed, "final_return": final,
                         "best_eval": max([c[3] for c in curve], default=float("nan")),
                         "solved": None if threshold is None else bool(final >= threshold),
                         "steps": s["steps"],
                         "steps_to_threshold": reach[0] if reach else None,
                         "wall_s_to_threshold": reach[1] if reach else None,
                         "cpu_s_to_threshold": reach[2] if reach else None,
                         "steps_per_s": s["steps_per_s"], "wall_s": s["wall_s"], "cpu_s": s.get("cpu_s"),
                         "deterministic": s.get("final_eval", {}).get("deterministic", True), "curve": curve})
    rows = _table(specs, runs, threshold)
    _write(out, env, budget, threshold, rows, runs, _command(env, algos, steps, seeds, env_kwargs, sets, preset, given))
    _plot(out, env, specs, runs)
    log(f"tables: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'runs.csv'}; plots: "
        f"{out / 'return_vs_steps.png'}, {out / 'return_vs_wall.png'}")
    if left_out:
        log(f"left out by --max-failures {max_failures}: {', '.join(left_out)} (the same command without it "
            f"runs them)")
    if failed:
        raise ContrlError(f"{len(failed)} run(s) failed ({', '.join(failed)}; see {out}/NAME.log); the tables "
                          f"cover the finished ones; run the same command again to retry them")
    return {"rows": rows, "out": str(out)}


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))):
        return str(len(seeds))
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _command(env, algos, steps, seeds, env_kwargs, sets, preset, threshold=None) -> str:
    """The contrl compare command that reproduces the table (without --out/--jobs)."""
    parts = ["contrl compare", f"--env {env}", f"--algos {algos}", f"--seeds {_seed_text(seeds)}"]
    if steps is not None:
        parts.append(f"--steps {steps}")
    if env_kwargs:
        parts.append("--env-kwargs " + " ".join(env_kwargs))
    if threshold is not None:
        parts.append(f"--threshold {threshold:g}")
    if preset:
        parts.append(f"--preset {preset}")
    if sets:
        parts.append("--set " + " ".join(sets))
    return " ".join(parts)


def _table(specs, runs, threshold) -> list[dict]:
    rows = []
    for name, _, _ in specs:
        rs = [r for r in runs if r["algo"] == name]
        if not rs:
            continue
        finals = [r["final_return"] for r in rs]
        lo, hi = bootstrap_ci(finals)
        reached = [r for r in rs if r["steps_to_threshold"] is not None]
        med = lambda key: float(np.median([r[key] for r in reached])) if reached else None  # noqa: E731
        bests = [r["best_eval"] for r in rs]
        rows.append({"algo": name, "seeds": len(rs), "steps": int(np.median([r["steps"] for r in rs])),
                     "final_mean": float(np.mean(finals)),
                     "final_std": float(np.std(finals)), "iqm": iqm(finals), "iqm_ci_low": lo, "iqm_ci_high": hi,
                     "solved": f"{sum(r['solved'] for r in rs)}/{len(rs)}" if threshold is not None else "",
                     "best_eval_mean": float(np.mean(bests)),
                     "reached": f"{len(reached)}/{len(rs)}" if threshold is not None else "",
                     "steps_to_threshold": med("steps_to_threshold"), "wall_s_to_threshold": med("wall_s_to_threshold"),
                     "cpu_s_to_threshold": med("cpu_s_to_threshold"),
                     "steps_per_s": float(np.mean([r["steps_per_s"] for r in rs]))})
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _write(out: Path, env: str, budget: dict, threshold, rows: list, runs: list, command: str) -> None:
    th = f"{threshold:g}" if threshold is not None else "none"
    steps = sorted(set(budget.values()))
    per = f"{steps[0]:,} steps per run" if len(steps) == 1 else "each algorithm's preset budget"
    modes = {r["deterministic"] for r in runs}
    evaluation = ("deterministic evaluation" if modes <= {True} else
                  "stochastic evaluation (sampled actions: eval_deterministic=false)" if modes == {False} else
                  "evaluation, deterministic in some runs and stochastic (eval_deterministic=false) in others")
    lines = [f"# compare on {env}, {per}", "", f"`{command}`", "",
             f"Final return: {evaluation} at the end of each run (not the best checkpoint); solved: "
             f"seeds whose final return is >= the threshold ({th}). IQM: interquartile mean of the final returns "
             f"over seeds with its 95% bootstrap interval. Best eval: the best periodic evaluation, mean over seeds "
             f"(a final well below it means the run peaked and fell back). To threshold: the first periodic "
             f"evaluation at or above it, median over the seeds that reached it.", "",
             "| algorithm | seeds | steps | final return (mean +- std) | IQM [95% CI] | solved (final) | best eval | "
             "reached threshold | env steps | wall-s | CPU-s | steps/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['seeds']} | {r['steps']:,} | {r['final_mean']:.1f} +- {r['final_std']:.1f} | "
                     f"{r['iqm']:.1f} [{r['iqm_ci_low']:.1f}, {r['iqm_ci_high']:.1f}] | {r['solved'] or '-'} | "
                     f"{r['best_eval_mean']:.1f} | {r['reached'] or '-'} | "
                     f"{_fmt(r['steps_to_threshold'], ',.0f')} | {_fmt(r['wall_s_to_threshold'], '.1f')} | "
                     f"{_fmt(r['cpu_s_to_threshold'], '.1f')} | {r['steps_per_s']:,.0f} |")
    lines += ["", "Final return per seed:", ""]
    for r in rows:
        finals = ", ".join(f"{x['final_return']:.1f} (s{x['seed']})" for x in runs if x["algo"] == r["algo"])
        lines.append(f"- {r['algo']}: {finals}")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]) if rows else ["algo"])
        w.writeheader()
        w.writerows(rows)
    with open(out / "runs.csv", "w", newline="") as f:
        keys = ["algo", "seed", "steps", "final_return", "best_eval", "solved", "steps_to_threshold",
                "wall_s_to_threshold", "cpu_s_to_threshold", "steps_per_s", "wall_s", "cpu_s"]
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
