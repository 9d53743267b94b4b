"""The Ray runner on this machine: its overhead against the local runners, and steps/s vs actors.
(Not named ray.py: run as a script, that name would shadow the ray package.)

    python benchmarks/on_ray.py overhead --env LunarLander-v3 --steps 100000
    python benchmarks/on_ray.py actors --env LunarLander-v3 --steps 100000

overhead: the same 8 envs and the same update rule stepped by the synchronous runner (in this
process, then in env subprocesses) and by the Ray runner (2 actors x 4 envs, then 1 actor x 8),
for PPO (rollouts of 8 x 256 steps) and A2C (rollouts of 8 x 5: a Ray round trip every 40
steps, the worst case), A3C on the Hogwild runner vs the Ray runner (2 workers x 4 envs), and
ACER (its LunarLander preset) synchronous on both, and asynchronous on Hogwild and on Ray.
actors: PPO on the Ray runner with 1, 2 and 4 actors of 4 envs each.
Evaluation is off; each run prints one JSON line with steps/s over the whole run (Ray's start
included) and in the steady state (first to last progress row), then a table of ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile

PPO = dict(n_steps=256, batch_size=256, n_epochs=4, gamma=0.999, gae_lambda=0.98, ent_coef=0.01, lr=3e-4)
A2C = dict(n_steps=5, gamma=0.995, gae_lambda=1.0, lr=8.3e-4, ent_coef=1e-5, optimizer="rmsprop", alpha=0.99,
           eps=1e-5)


def _run(label: str, algo: str, env: str, steps: int, **overrides) -> dict:
    from contrl.api import train

    hp = {"ppo": PPO, "a2c": A2C, "a3c": A2C}.get(algo, {})  # acer: its LunarLander preset
    with tempfile.TemporaryDirectory() as d:
        agent = train(algo, env, steps=steps, seed=0, out=f"{d}/run", quiet=True, tensorboard=False,
                      overrides={**hp, "eval_every": 10**9, "eval_episodes": 1, "final_eval_episodes": 0, **overrides})
        with open(f"{d}/run/progress.csv") as f:
            rows = list(csv.DictReader(f))
    (w0, s0), (w1, s1) = [(float(r["wall_s"]), int(r["step"])) for r in (rows[0], rows[-1])]
    s = agent.summary
    r = {"label": label, "algo": algo, "steps": s["steps"], "wall_s": round(s["wall_s"], 1),
         "cpu_s": round(s["cpu_s"], 1), "steps_per_s": round(s["steps_per_s"]),
         "steady_steps_per_s": round((s1 - s0) / max(w1 - w0, 1e-9))}
    print(json.dumps(r), flush=True)
    return r


def overhead(env: str, steps: int) -> None:
    runs = [
        ("ppo sync 8 envs", "ppo", dict(n_envs=8, vec="inprocess")),
        ("ppo sync 8 env subprocesses", "ppo", dict(n_envs=8, vec="subprocess")),
        ("ppo ray 2 actors x 4", "ppo", dict(runner="ray", workers=2, n_envs=4)),
        ("ppo ray 1 actor x 8", "ppo", dict(runner="ray", workers=1, n_envs=8)),
        ("a2c sync 8 envs", "a2c", dict(n_envs=8, vec="inprocess")),
        ("a2c ray 2 actors x 4", "a2c", dict(runner="ray", workers=2, n_envs=4)),
        ("a3c hogwild 2 workers x 4", "a3c", dict(workers=2, n_envs=4)),
        ("a3c ray 2 actors x 4", "a3c", dict(runner="ray", workers=2, n_envs=4)),
        ("acer sync 8 envs", "acer", dict(n_envs=8, vec="inprocess")),
        ("acer ray 2 actors x 4", "acer", dict(runner="ray", workers=2, n_envs=4)),
        ("acer hogwild 2 workers x 4", "acer", dict(runner="async", workers=2, n_envs=4)),
        ("acer ray async 2 actors x 4", "acer", dict(runner="ray", ray_pattern="async", workers=2, n_envs=4)),
    ]
    rows = {label: _run(label, algo, env, steps, **o) for label, algo, o in runs}
    print("\n| run | steps/s (steady) | steps/s (whole run) | vs the local runner (steady) |")
    print("|---|---:|---:|---:|")
    base = {"ppo": "ppo sync 8 envs", "a2c": "a2c sync 8 envs", "a3c": "a3c hogwild 2 workers x 4",
            "acer": "acer sync 8 envs", "acer async": "acer hogwild 2 workers x 4"}
    for label, r in rows.items():
        asynchronous = r["algo"] == "acer" and ("async" in label or "hogwild" in label)
        b = rows[base["acer async" if asynchronous else r["algo"]]]
        print(f"| {label} | {r['steady_steps_per_s']:,} | {r['steps_per_s']:,} | "
              f"{r['steady_steps_per_s'] / b['steady_steps_per_s']:.2f}x |")


def actors(env: str, steps: int) -> None:
    rows = [_run(f"ppo ray {w} actor(s) x 4", "ppo", env, steps, runner="ray", workers=w, n_envs=4)
            for w in (1, 2, 4)]
    print("\n| actors x envs | steps/s (steady) | steps/s (whole run) | vs 1 actor (steady) |")
    print("|---|---:|---:|---:|")
    for w, r in zip((1, 2, 4), rows):
        print(f"| {w} x 4 | {r['steady_steps_per_s']:,} | {r['steps_per_s']:,} | "
              f"{r['steady_steps_per_s'] / rows[0]['steady_steps_per_s']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["overhead", "actors"])
    ap.add_argument("--env", default="LunarLander-v3")
    ap.add_argument("--steps", type=int, default=100_000)
    args = ap.parse_args()
    (overhead if args.what == "overhead" else actors)(args.env, args.steps)


if __name__ == "__main__":
    main()
