"""The acting loop's cost per env step next to what it cannot avoid (issue 17 item 2's measurement).

    python benchmarks/acting.py --algo ppo --env HalfCheetah-v5
    python benchmarks/acting.py --algo ppo --env Hopper-v5 --n-envs 4
    python benchmarks/acting.py --algo ppo --env contrl/CartPoleNoVel-v1 --net lstm

Builds the run as ``contrl train ALGO --env ENV`` would (the preset the env id picks, ``--set`` on
top; the in-process vector env of ``n_envs`` envs, the agent with its observation normaliser, the
reward scaler) and times ``collect`` -- the acting loop every runner uses -- over ``--rollouts``
rollouts, in one thread (torch's and numpy's BLAS). Next to it, the two costs a step cannot
avoid, measured the same way: the envs' own ``step`` (``gymnasium.make(ENV)`` as the user gets
it, random actions, resets at episode ends; n_envs of them) and one forward of the network on
the n_envs observations as the loop runs it (the numpy forward; torch's in inference mode for a
network without one). Prints microseconds per loop iteration (one step of every env) for each,
and the ratio loop / (env steps + forward) (issue 17's goal: <= 1.5 at n_envs 1..4).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch
from update import best_seconds, run_args, run_parser  # the sibling benchmark (run as a script from benchmarks/)


def env_step_us(env_id: str, env_kwargs: dict, n: int, steps: int, seed: int = 0) -> float:
    """Microseconds per iteration of ``n`` gymnasium envs stepping random actions."""
    import gymnasium as gym

    import contrl.envs  # noqa: F401  (registers contrl/... ids)

    envs = [gym.make(env_id, **env_kwargs) for _ in range(n)]
    for i, e in enumerate(envs):
        e.reset(seed=seed + i)
        e.action_space.seed(seed + i)
    actions = [[e.action_space.sample() for _ in range(steps)] for e in envs]
    k = [0]

    def step() -> None:
        for e, acts in zip(envs, actions):
            _, _, term, trunc, _ = e.step(acts[k[0] % steps])
            if term or trunc:
                e.reset()
        k[0] += 1

    seconds = best_seconds(step, steps, rounds=3, warmup=0)
    for e in envs:
        e.close()
    return seconds * 1e6


def forward_us(model, obs: torch.Tensor, state: torch.Tensor, repeat: int = 2000) -> float:
    """Microseconds per forward of ``model`` on ``obs`` (``[n, obs_dim]``) as the acting loop runs it:
    the numpy forward (``numpy_forward``; a recurrent network's with the state), else torch's in
    inference mode."""
    if hasattr(model, "numpy_forward"):
        fast, x, h = model.numpy_forward(), obs.numpy(), state.numpy()
        if model.recurrent:
            return best_seconds(lambda: fast(x, h), repeat, rounds=3) * 1e6
        return best_seconds(lambda: fast(x), repeat, rounds=3) * 1e6
    with torch.inference_mode():
        return best_seconds(lambda: model.step(obs, state), repeat, rounds=3) * 1e6


def measure(algo: str, env: str, env_kwargs: dict, net: str | None, overrides: dict, n_envs: int | None,
            rollouts: int) -> dict:
    from contrl.agent import Agent, build_model
    from contrl.algos import make_rule
    from contrl.config import build_config
    from contrl.envs.normalize import ObsNormalizer, RewardScaler
    from contrl.envs.vec import VecEnv
    from contrl.runners.collect import collect

    if n_envs is not None:
        overrides = {**overrides, "n_envs": n_envs}
    cfg = build_config(algo, env, env_kwargs=env_kwargs, net=net, overrides=overrides)
    n = cfg.n_envs
    venv = VecEnv(cfg.env, cfg.env_kwargs, [cfg.seed + i for i in range(n)])
    torch.manual_seed(0)
    model = build_model(cfg, venv.observation_space, venv.action_space)
    norm = ObsNormalizer(venv.obs_dim, cfg.clip_obs) if cfg.norm_obs else None
    agent = Agent(cfg, model, venv.observation_space, venv.action_space, norm)
    rule = make_rule(cfg, model, n)
    rollout = rule.new_rollout(n)
    scaler = RewardScaler(n, rule.cfg.gamma) if cfg.norm_reward else None
    gen = torch.Generator().manual_seed(0)
    state = model.initial_state(n)
    collect(agent, venv, rollout, gen, scaler, None, state)  # warm-up
    times = []
    for _ in range(rollouts):
        t0 = time.perf_counter()
        collect(agent, venv, rollout, gen, scaler, None, state)
        times.append((time.perf_counter() - t0) / rollout.T)
    venv.close()
    loop = statistics.median(times) * 1e6
    env_us = env_step_us(cfg.env, cfg.env_kwargs, n, min(rollout.T * 4, 4000))
    fwd = forward_us(model, agent.preprocess(np.zeros((n, venv.obs_dim), np.float32)), model.initial_state(n))
    return {"algo": algo, "env": cfg.env, "net": cfg.net.type, "n_envs": n, "T": rollout.T,
            "loop_us": round(loop, 1), "env_us": round(env_us, 1), "forward_us": round(fwd, 1),
            "ratio": round(loop / (env_us + fwd), 2)}


def main() -> None:
    p = run_parser(__doc__.split("\n\n")[0], ["ppo", "a2c", "acer"])
    p.add_argument("--n-envs", type=int, help="envs in lock-step (default: the preset's)")
    p.add_argument("--rollouts", type=int, default=10, help="timed rollouts (after 1 warm-up one)")
    a = p.parse_args()
    env_kwargs, overrides = run_args(a)
    r = measure(a.algo, a.env, env_kwargs, a.net, overrides, a.n_envs, a.rollouts)
    print(f"{r['algo']} on {r['env']} ({r['net']}, {r['n_envs']} env(s), rollouts of {r['T']} steps): "
          f"{r['loop_us']:.1f} us per iteration; env steps {r['env_us']:.1f} us + forward {r['forward_us']:.1f} us; "
          f"ratio {r['ratio']:.2f}x")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
