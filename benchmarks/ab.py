"""Two installations of contrl side by side: the same runs, A and B alternating, repeated.

    python benchmarks/ab.py --a /path/to/before/.venv/bin/python --b .venv/bin/python --repeat 3
    python benchmarks/ab.py --a ... --b ... --runs "ppo sync" "a3c hogwild" --steps 200000
    python benchmarks/ab.py --a ... --b ... --runs "acer preset" --env-kwargs continuous=true

For a change that must not cost speed (a refactor, a guard): every run is `contrl train` in a
subprocess of the given Python, started from an empty folder (so the installed contrl is the
one imported), evaluation off, seed 0. A and B alternate so that the machine's drift hits both
alike. Prints the steady steps/s of each run (first to last progress row: process start-up
left out), then per run kind the median of each side, their ratio B / A, and the median of the
ratios of the runs made back to back (which the machine's slow drift affects least).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import tempfile
from pathlib import Path

PPO = ["n_steps=256", "batch_size=256", "n_epochs=4", "gamma=0.999", "gae_lambda=0.98", "ent_coef=0.01"]
A2C = ["n_steps=5", "gamma=0.995", "lr=8.3e-4", "ent_coef=1e-5", "optimizer=rmsprop"]
RUNS = {  # name: (algo, --set values); LunarLander-v3, 8 envs in all but the presets
    "ppo sync": ("ppo", ["n_envs=8", "vec=inprocess", *PPO]),
    "a2c sync": ("a2c", ["n_envs=8", "vec=inprocess", *A2C]),
    "acer sync": ("acer", ["n_envs=8", "vec=inprocess"]),
    "a3c hogwild": ("a3c", ["workers=2", "n_envs=4", *A2C]),
    "acer hogwild": ("acer", ["runner=async", "workers=2", "n_envs=4"]),
    "ppo ray": ("ppo", ["runner=ray", "workers=2", "n_envs=4", *PPO]),
    "a2c ray": ("a2c", ["runner=ray", "workers=2", "n_envs=4", *A2C]),
    "acer ray async": ("acer", ["runner=ray", "ray_pattern=async", "workers=2", "n_envs=4"]),
    "a2c preset": ("a2c", []),  # the env's shipped preset as it is (LunarLander-v3: 4 envs, 256x256, Adam)
    "acer preset": ("acer", []),
}
DEFAULT = ["ppo sync", "a2c sync", "acer sync", "a3c hogwild", "acer hogwild"]  # the Ray runs need "contrl[ray]"


def steady(python: str, algo: str, values: list[str], env: str, steps: int, env_kwargs: list[str] = ()) -> float:
    with tempfile.TemporaryDirectory() as d:
        cmd = [python, "-m", "contrl", "train", algo, "--env", env, "--steps", str(steps), "--seed", "0",
               *(["--env-kwargs", *env_kwargs] if env_kwargs else []),
               "--out", "run", "--no-tensorboard", "--quiet", "--set", "eval_every=1000000000", "eval_episodes=1",
               "final_eval_episodes=0", *values]
        subprocess.run(cmd, cwd=d, check=True, capture_output=True, text=True)
        with open(Path(d) / "run" / "progress.csv") as f:
            rows = list(csv.DictReader(f))
    (w0, s0), (w1, s1) = [(float(r["wall_s"]), int(r["step"])) for r in (rows[0], rows[-1])]
    return (s1 - s0) / max(w1 - w0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="Python of installation A (before)")
    ap.add_argument("--b", required=True, help="Python of installation B (after)")
    ap.add_argument("--runs", nargs="+", default=DEFAULT, choices=list(RUNS))
    ap.add_argument("--env", default="LunarLander-v3")
    ap.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="e.g. continuous=true")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    got: dict = {}
    for name in args.runs:
        algo, values = RUNS[name]
        for i in range(args.repeat):
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                sps = steady(getattr(args, side), algo, values, args.env, args.steps, args.env_kwargs)
                got.setdefault((name, side), []).append(sps)
                print(f"{name} {side.upper()} #{i}: {sps:,.0f} steps/s", flush=True)
    print(f"\n| run | A steps/s (median of {args.repeat}) | B steps/s | B / A | B / A, median of the pairs |")
    print("|---|---:|---:|---:|---:|")
    for name in args.runs:
        a, b = statistics.median(got[(name, "a")]), statistics.median(got[(name, "b")])
        pairs = statistics.median(y / x for x, y in zip(got[(name, "a")], got[(name, "b")]))  # run back to back
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.3f}x | {pairs:.3f}x |")


if __name__ == "__main__":
    main()
