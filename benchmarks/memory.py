"""When memory matters: PPO with an MLP vs with an LSTM on velocity-masked tasks.

    python benchmarks/memory.py --envs contrl/PendulumNoVel-v1 contrl/LunarLanderNoVel-v3 --seeds 0 1 2 \\
        --jobs 2 --out bench-memory

Each env x net x seed is one `contrl train ppo --env ENV --net NET --seed S` with the shipped
presets (MLP: the base env's preset; LSTM: its ``-lstm`` preset, same PPO values), up to
``--jobs`` at once. Prints a markdown table (final evaluation: 20 deterministic episodes; mean and
std over seeds; steps/s) and writes learning curves (mean +- std over seeds) per env to --out.

    python benchmarks/memory.py --speed 200000 --envs LunarLander-v3

measures speed alone: the MLP and the LSTM preset of each env one after the other on an idle
machine (no evaluations), and prints the LSTM's steps/s as a fraction of the MLP's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def run_one(out: Path, env: str, net: str, seed: int) -> dict:
    run = out / f"{env.split('/')[-1]}-{net}-s{seed}"
    if not (run / "summary.json").is_file():
        cmd = [sys.executable, "-m", "contrl", "train", "ppo", "--env", env, "--net", net, "--seed", str(seed),
               "--out", str(run), "--force", "--quiet", "--no-tensorboard"]
        subprocess.run(cmd, check=True)
    s = json.loads((run / "summary.json").read_text())
    return {"env": env, "net": net, "seed": seed, "run": str(run), "final": s["final_eval"]["mean"],
            "steps": s["steps"], "steps_per_s": s["steps_per_s"]}


def speed(envs: list[str], steps: int) -> None:
    import tempfile

    import torch

    from contrl.api import train

    torch.set_num_threads(1)
    for env in envs:
        sps = {}
        for net in ("mlp", "lstm"):
            with tempfile.TemporaryDirectory() as d:
                agent = train("ppo", env, net=net, steps=steps, seed=0, out=f"{d}/run", quiet=True, tensorboard=False,
                              overrides={"vec": "inprocess", "eval_every": 10**9, "eval_episodes": 1,
                                         "final_eval_episodes": 0})
            sps[net] = agent.summary["steps_per_s"]
            print(json.dumps({"env": env, "net": net, "preset": agent.config.preset, "steps": agent.summary["steps"],
                              "steps_per_s": sps[net]}), flush=True)
        print(f"{env}: LSTM {sps['lstm']:,.0f} vs MLP {sps['mlp']:,.0f} steps/s = {sps['lstm'] / sps['mlp']:.0%}")


def _evals(runs: list[str]) -> list[tuple[int, float]]:
    """(step of the first seed, mean over seeds) of each periodic evaluation in progress.csv."""
    import csv

    per_run = []
    for run in runs:
        with open(Path(run) / "progress.csv", newline="") as f:
            per_run.append([(int(r["step"]), float(r["eval_return"])) for r in csv.DictReader(f) if r.get("eval_return")])
    n = min(len(p) for p in per_run)
    return [(per_run[0][i][0], float(np.mean([p[i][1] for p in per_run]))) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", nargs="+", default=["contrl/PendulumNoVel-v1", "contrl/LunarLanderNoVel-v3"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="bench-memory")
    ap.add_argument("--speed", type=int, default=0, help="only measure steps/s over this many steps")
    args = ap.parse_args()
    if args.speed:
        speed(args.envs, args.speed)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(env, net, seed) for env in args.envs for net in ("mlp", "lstm") for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(out, *j), jobs))
    for r in results:
        print(json.dumps(r))
    print("\n| env | net | steps | final return (mean +- std over seeds) | per seed | steps/s |")
    print("|---|---|---|---|---|---|")
    from contrl.record.plots import plot_runs

    for env in args.envs:
        for net in ("mlp", "lstm"):
            rs = [r for r in results if r["env"] == env and r["net"] == net]
            finals = [r["final"] for r in rs]
            print(f"| {env} | {net} | {rs[0]['steps']:,} | {np.mean(finals):.1f} +- {np.std(finals):.1f} | "
                  f"{', '.join(f'{f:.1f}' for f in finals)} | {np.mean([r['steps_per_s'] for r in rs]):,.0f} |")
        print(f"\nperiodic evaluations on {env} (10 episodes each; mean over seeds):\n")
        print("| step | mlp | lstm |\n|---|---|---|")
        evals = {net: _evals([r["run"] for r in results if r["env"] == env and r["net"] == net])
                 for net in ("mlp", "lstm")}
        for i, (step, v) in enumerate(evals["mlp"]):
            other = evals["lstm"][i][1] if i < len(evals["lstm"]) else float("nan")
            print(f"| {step:,} | {v:.1f} | {other:.1f} |")
        runs = [r["run"] for r in results if r["env"] == env]
        png = out / f"{env.split('/')[-1]}.png"
        plot_runs(runs, png, window=20)
        print(f"curves: {png}")


if __name__ == "__main__":
    main()
