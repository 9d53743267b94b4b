"""PPO: contrl vs Stable-Baselines3, identical hyper-parameters, side by side in one session.

    pip install -e ".[bench]"
    python benchmarks/ppo_vs_sb3.py --env LunarLander-v3 --steps 1000000 --seeds 0 1 2

Both use 1 torch thread, in-process envs, the RL zoo's LunarLander values (16 envs, n_steps
1024, batch 64, 4 epochs, gamma 0.999, lambda 0.98, ent 0.01, lr 3e-4, 64x64 tanh MLPs for pi
and V). For each seed the two libraries run one after the other; the script prints one JSON
line per run and a table of ratios. Final return: 10 deterministic episodes, seeds 20000+.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

HP = dict(n_envs=16, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98, ent_coef=0.01,
          lr=3e-4, clip_range=0.2, vf_coef=0.5, max_grad_norm=0.5)


def run_contrl(env: str, steps: int, seed: int) -> dict:
    from contrl.api import train

    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        agent = train("ppo", env, steps=steps, seed=seed, out=f"{d}/run", quiet=True, tensorboard=False,
                      overrides={**HP, "vec": "inprocess", "eval_every": 10**9, "eval_episodes": 1,
                                 "final_eval_episodes": 0})
        wall = time.time() - t0
        ev = agent.evaluate(10, seed=20_000)
    return {"lib": "contrl", "seed": seed, "steps": agent.summary["steps"], "wall_s": wall,
            "steps_per_s": agent.summary["steps"] / wall, "final_return": ev["mean"]}


def run_sb3(env: str, steps: int, seed: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(env, n_envs=HP["n_envs"], seed=seed)
    model = PPO("MlpPolicy", venv, n_steps=HP["n_steps"], batch_size=HP["batch_size"], n_epochs=HP["n_epochs"],
                gamma=HP["gamma"], gae_lambda=HP["gae_lambda"], ent_coef=HP["ent_coef"], learning_rate=HP["lr"],
                clip_range=HP["clip_range"], vf_coef=HP["vf_coef"], max_grad_norm=HP["max_grad_norm"],
                seed=seed, device="cpu", verbose=0)
    t0 = time.time()
    model.learn(total_timesteps=steps)
    wall = time.time() - t0
    rets = []
    for i in range(10):
        e = gym.make(env)
        obs, _ = e.reset(seed=20_000 + i)
        done, total = False, 0.0
        while not done:
            a, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = e.step(a)
            total += float(r)
            done = term or trunc
        rets.append(total)
    return {"lib": "sb3", "seed": seed, "steps": int(model.num_timesteps), "wall_s": wall,
            "steps_per_s": model.num_timesteps / wall, "final_return": float(np.mean(rets))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="LunarLander-v3")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        for fn in (run_contrl, run_sb3):
            r = fn(args.env, args.steps, seed)
            print(json.dumps(r), flush=True)
            results.append(r)
    for lib in ("contrl", "sb3"):
        rs = [r for r in results if r["lib"] == lib]
        print(f"{lib:7s} steps/s {np.mean([r['steps_per_s'] for r in rs]):8,.0f}  final return "
              f"{np.mean([r['final_return'] for r in rs]):7.1f} +- {np.std([r['final_return'] for r in rs]):.1f}")
    c = np.mean([r["steps_per_s"] for r in results if r["lib"] == "contrl"])
    s = np.mean([r["steps_per_s"] for r in results if r["lib"] == "sb3"])
    print(f"steps/s ratio contrl/sb3: {c / s:.2f}x")


if __name__ == "__main__":
    main()
