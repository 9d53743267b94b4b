"""ACER against PPO and A2C, and ACER's own knobs, with the shipped presets.

    python benchmarks/acer.py algos --env LunarLander-v3 --steps 500000 --seeds 0 1 --jobs 2
    python benchmarks/acer.py algos --env LunarLander-v3 --env-kwargs continuous=true --steps 500000
    python benchmarks/acer.py replay-ratio --env LunarLander-v3 --steps 500000   # replay_ratio 0, 1, 4
    python benchmarks/acer.py buffer-size --env LunarLander-v3 --steps 500000    # 5k, 50k, 200k
    python benchmarks/acer.py runners --env LunarLander-v3 --steps 500000        # sync vs async

Each variant x seed is one ``contrl train`` subprocess (up to ``--jobs`` at once) evaluated every
``--eval-every`` steps on 10 deterministic episodes. Prints a markdown table per experiment
(final evaluation over 20 episodes: mean +- std over seeds; the first evaluation at or above
``--threshold`` in env steps and wall-seconds, per seed; steps/s; replay memory) and writes
return-vs-steps and return-vs-wall-time plots of the evaluations (mean over seeds) to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

EXPERIMENTS = {
    # name -> [(label, algo, extra CLI arguments)]
    "algos": [("acer", "acer", []), ("ppo", "ppo", []), ("a2c", "a2c", [])],
    "replay-ratio": [(f"acer rr={r}", "acer", ["--set", f"replay_ratio={r}"]) for r in (0, 1, 4)],
    "buffer-size": [(f"acer buffer={b:,}", "acer", ["--buffer-size", str(b)]) for b in (5_000, 50_000, 200_000)],
    "runners": [("acer sync (8 envs)", "acer", []),
                ("acer async (2 workers x 4 envs)", "acer", ["--runner", "async", "--workers", "2", "--set", "n_envs=4"])],
}


def run_one(out: Path, label: str, algo: str, extra: list, env: str, env_kwargs: list, steps: int, seed: int,
            eval_every: int) -> dict:
    run = out / f"{label.replace(' ', '_').replace(',', '').replace('=', '')}-s{seed}"
    if not (run / "summary.json").is_file():
        cmd = [sys.executable, "-m", "contrl", "train", algo, "--env", env, "--steps", str(steps), "--seed", str(seed),
               "--out", str(run), "--force", "--quiet", "--no-tensorboard", *extra,
               "--set", f"eval_every={eval_every}"]
        if env_kwargs:
            cmd += ["--env-kwargs", *env_kwargs]
        subprocess.run(cmd, check=True)
    s = json.loads((run / "summary.json").read_text())
    with open(run / "progress.csv", newline="") as f:
        curve = [(int(r["step"]), float(r["wall_s"]), float(r["eval_return"]))
                 for r in csv.DictReader(f) if r.get("eval_return")]
    return {"label": label, "seed": seed, "run": str(run), "final": s["final_eval"]["mean"], "steps": s["steps"],
            "wall_s": s["wall_s"], "steps_per_s": s["steps_per_s"], "curve": curve,
            "replay_bytes": s.get("replay_buffer", {}).get("bytes")}


def first_reach(curve: list, threshold: float) -> tuple:
    for step, wall, ret in curve:
        if ret >= threshold:
            return step, wall
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--env", default="LunarLander-v3")
    ap.add_argument("--env-kwargs", nargs="*", default=[])
    ap.add_argument("--steps", type=int, default=500_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=25_000)
    ap.add_argument("--threshold", type=float, default=200.0)
    ap.add_argument("--out", default="bench-acer")
    args = ap.parse_args()
    tag = args.env.split("/")[-1] + ("-" + "-".join(args.env_kwargs).replace("=", "") if args.env_kwargs else "")
    out = Path(args.out) / f"{args.experiment}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    variants = EXPERIMENTS[args.experiment]
    jobs = [(label, algo, extra, seed) for label, algo, extra in variants for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(out, j[0], j[1], j[2], args.env, args.env_kwargs, args.steps,
                                                  j[3], args.eval_every), jobs))
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "curve"}))
    print(f"\n{args.experiment} on {args.env} {' '.join(args.env_kwargs)}, {args.steps:,} steps, seeds {args.seeds}\n")
    print(f"| variant | final return (mean +- std over seeds) | per seed | first eval >= {args.threshold:g} "
          f"(steps / wall-s, per seed) | steps/s | replay memory |")
    print("|---|---|---|---|---|---|")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, _ in variants:
        rs = [r for r in results if r["label"] == label]
        finals = [r["final"] for r in rs]
        reach = [first_reach(r["curve"], args.threshold) for r in rs]
        reach_s = ", ".join(f"{s:,} / {w:.0f}" if s is not None else "never" for s, w in reach)
        mem = rs[0]["replay_bytes"]
        print(f"| {label} | {np.mean(finals):.1f} +- {np.std(finals):.1f} | {', '.join(f'{f:.1f}' for f in finals)} | "
              f"{reach_s} | {np.mean([r['steps_per_s'] for r in rs]):,.0f} | "
              f"{f'{mem / 2**20:.1f} MiB' if mem else '-'} |")
        n = min(len(r["curve"]) for r in rs)
        steps = [rs[0]["curve"][i][0] for i in range(n)]
        wall = [np.mean([r["curve"][i][1] for r in rs]) for i in range(n)]
        ret = [np.mean([r["curve"][i][2] for r in rs]) for i in range(n)]
        axes[0].plot(steps, ret, label=label)
        axes[1].plot(wall, ret, label=label)
    for ax, xlabel in zip(axes, ("env steps", "wall-seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval return (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{args.experiment}: {args.env} {' '.join(args.env_kwargs)}")
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=100)
    print(f"\ncurves: {png}")


if __name__ == "__main__":
    main()
