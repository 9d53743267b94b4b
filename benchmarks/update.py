"""The update's cost per minibatch next to the arithmetic it does (issue 17's micro-benchmark).

    python benchmarks/update.py --algo ppo --env HalfCheetah-v5
    python benchmarks/update.py --algo ppo --env LunarLander-v3 --set batch_size=256
    python benchmarks/update.py --algo a2c --env LunarLander-v3 --env-kwargs continuous=true
    python benchmarks/update.py --algo ppo --env contrl/CartPoleNoVel-v1 --net lstm
    python benchmarks/update.py --algo acer --env LunarLander-v3        # one ACER gradient + step
    python benchmarks/update.py --algo ppo --env HalfCheetah-v5 --autograd   # without the hand backward

Builds the network and update rule exactly as ``contrl train ALGO --env ENV`` would (the preset
the env id picks, ``--set`` on top), fills one rollout of the preset's size (n_steps x n_envs)
with random observations, actions, rewards and episode ends, and times the rule's own
``update`` on it (PPO: every epoch's minibatches; A2C: its one gradient on the whole rollout),
``--repeat`` times after a warm-up, in one torch thread; ACER: one gradient and step on the
rollout as a segment of its memory (``gradients`` + ``step``: the on-policy update and every
replayed one cost this), with a behaviour policy off the network's. Prints, per minibatch: the
median wall-ms, the floating-point operations of forward + backward (3x the forward's
multiply-adds x 2; Linear and LSTM layers, the first layer's input gradient included), this
core's measured matmul speed (a [batch, 256] x [256, 256] product, the shape the 256x256
networks run), the time those FLOPs take at that speed, and the ratio (issue 17's goal: <= 2x
for the 256x256 preset networks; approximate for ACER, whose average network and SDN samples
it does not count).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from torch import nn


def flops_per_sample(model: nn.Module) -> int:
    """Forward multiply-adds x 2 of every Linear and LSTM layer, per sample (per step for an LSTM)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, (nn.LSTM, nn.LSTMCell)):
            h = m.hidden_size
            total += 2 * 4 * h * (m.input_size + h)
    return total


def best_seconds(fn, repeat: int, rounds: int = 5, warmup: int = 100) -> float:
    """Seconds per call of ``fn()``: the best of ``rounds`` rounds of ``repeat`` calls, after a warm-up."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def run_parser(description: str, algos: list[str]) -> argparse.ArgumentParser:
    """The arguments that name a run as ``contrl train`` does: --algo, --env, --env-kwargs, --net, --set."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--algo", default="ppo", choices=algos)
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--net", choices=["mlp", "lstm"])
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    return p


def run_args(a: argparse.Namespace) -> tuple[dict, dict]:
    """(env kwargs, overrides) of ``run_parser``'s arguments; one thread (torch's and numpy's BLAS,
    as a run holds them) for the timing."""
    from contrl.config import parse_assignments
    from contrl.threads import set_threads

    set_threads(1)
    return parse_assignments(a.env_kwargs, "--env-kwargs"), parse_assignments(a.set)


def matmul_gflops(batch: int, width: int = 256, repeat: int = 2000) -> float:
    """This core's speed on a [batch, width] x [width, width] product, in GFLOP/s (best of 5)."""
    a, w = torch.randn(batch, width), torch.randn(width, width)
    return 2 * batch * width * width / best_seconds(lambda: a @ w, repeat) / 1e9


def fill(rollout, act_space, rng: np.random.Generator) -> None:
    """Random but valid experience: observations N(0, 1), actions in the space, about 1% episode ends."""
    import gymnasium as gym

    T, N = rollout.T, rollout.N
    rollout.obs.copy_(torch.from_numpy(rng.standard_normal(rollout.obs.shape).astype(np.float32)))
    if isinstance(act_space, gym.spaces.Discrete):
        rollout.actions.copy_(torch.from_numpy(rng.integers(0, act_space.n, rollout.actions.shape)))
    else:
        rollout.actions.copy_(torch.from_numpy(rng.uniform(-1, 1, rollout.actions.shape).astype(np.float32)))
    rollout.logp.copy_(torch.from_numpy(rng.normal(-1.0, 0.3, (T, N)).astype(np.float32)))
    rollout.values.copy_(torch.from_numpy(rng.standard_normal((T, N)).astype(np.float32)))
    rollout.rewards.copy_(torch.from_numpy(rng.standard_normal((T, N)).astype(np.float32)))
    rollout.dones.copy_(torch.from_numpy((rng.random((T, N)) < 0.01).astype(np.float32)))
    rollout.last_values.copy_(torch.from_numpy(rng.standard_normal(N).astype(np.float32)))


def fill_behaviour(rollout, act_space, rng: np.random.Generator) -> None:
    """What an ACER rollout keeps besides: a behaviour policy near the network's (discrete: random
    logits; Box: mean N(0, 0.5), log-std -0.5), final observations, terminations (half the ends)."""
    import gymnasium as gym

    mu = rollout.mu.numpy()
    if isinstance(act_space, gym.spaces.Discrete):
        mu[:] = rng.normal(0.0, 0.5, mu.shape)
    else:
        half = mu.shape[-1] // 2
        mu[..., :half] = rng.normal(0.0, 0.5, mu[..., :half].shape)
        mu[..., half:] = -0.5
    rollout.final_obs.copy_(torch.from_numpy(rng.standard_normal(rollout.final_obs.shape).astype(np.float32)))
    rollout.terminated.copy_((rollout.dones > 0) & torch.from_numpy(rng.random(rollout.dones.shape) < 0.5))
    rollout.obs_last.copy_(torch.from_numpy(rng.standard_normal(rollout.obs_last.shape).astype(np.float32)))


def measure(algo: str, env: str, env_kwargs: dict, net: str | None, overrides: dict, repeat: int) -> dict:
    from contrl.agent import build_model
    from contrl.algos import make_rule
    from contrl.config import build_config
    from contrl.envs.make import env_spaces

    cfg = build_config(algo, env, env_kwargs=env_kwargs, net=net, overrides=overrides)
    obs_space, act_space = env_spaces(cfg.env, cfg.env_kwargs)
    torch.manual_seed(0)
    model = build_model(cfg, obs_space, act_space)
    n_envs = cfg.n_envs
    rule = make_rule(cfg, model, n_envs)
    rule.set_progress(0.0)
    rollout = rule.new_rollout(n_envs)
    fill(rollout, act_space, np.random.default_rng(0))
    samples = rollout.T * rollout.N
    gen = torch.Generator().manual_seed(0)
    algo_cfg = cfg.algo_config()
    batch = min(getattr(algo_cfg, "batch_size", samples), samples)  # samples per gradient
    served = [0]  # minibatches the rule drew (PPO: every epoch's; A2C draws none: one gradient)
    draw = rollout.minibatches

    def counted(*args, **kwargs):
        for mb in draw(*args, **kwargs):
            served[0] += 1
            yield mb

    rollout.minibatches = counted
    update = lambda: rule.update(rollout, gen)  # noqa: E731
    if cfg.rule == "acer":  # one gradient on a segment as the memory gives it (step 0-7), stepped
        from contrl.storage.replay import Segment

        fill_behaviour(rollout, act_space, np.random.default_rng(1))
        seg = Segment.from_rollout(rollout)
        batch = samples

        def update():
            served[0] += 1
            if not rule.gradients(seg, gen).get("skipped_updates"):
                rule.step()

    times = []
    for i in range(repeat + 2):  # 2 warm-up updates
        state = {k: v.clone() for k, v in model.state_dict().items()}
        served[0] = 0
        t0 = time.perf_counter()
        update()
        dt = time.perf_counter() - t0
        model.load_state_dict(state)  # the same weights every time (no drift into other regimes)
        if i >= 2:
            times.append(dt / max(served[0], 1))
    ms = statistics.median(times) * 1e3
    seq = cfg.seq_len if cfg.net.type == "lstm" else 0
    flop = 3 * flops_per_sample(model) * batch
    gflops = matmul_gflops(batch)
    ideal = flop / (gflops * 1e9) * 1e3
    return {"algo": algo, "env": cfg.env, "net": cfg.net.type, "hidden": list(cfg.net.hidden), "rollout": samples,
            "minibatch": batch, "seq_len": seq, "ms_per_minibatch": round(ms, 3), "mflop": round(flop / 1e6, 2),
            "matmul_gflops": round(gflops, 1), "flop_ms": round(ideal, 3), "ratio": round(ms / ideal, 2)}


def main() -> None:
    p = run_parser(__doc__.split("\n\n")[0], ["ppo", "a2c", "a3c", "acer"])
    p.add_argument("--repeat", type=int, default=20, help="timed updates (after 2 warm-up ones)")
    p.add_argument("--autograd", action="store_true",
                   help="through autograd instead of the hand-written backward (the MLP's default)")
    a = p.parse_args()
    if a.autograd:
        from contrl.algos import A2C, ACER, PPO

        PPO.hand_backward = A2C.hand_backward = ACER.hand_backward = False
    env_kwargs, overrides = run_args(a)
    r = measure(a.algo, a.env, env_kwargs, a.net, overrides, a.repeat)
    seqs = f" (sequences of at most {r['seq_len']} steps)" if r["seq_len"] else ""
    print(f"{r['algo']} on {r['env']} ({r['net']} {r['hidden']}): rollout {r['rollout']:,} samples, minibatch "
          f"{r['minibatch']} samples{seqs}")
    print(f"  {r['ms_per_minibatch']:.3f} ms per minibatch (median of {a.repeat} updates); forward + backward "
          f"{r['mflop']:.1f} MFLOP; matmul here {r['matmul_gflops']:.1f} GFLOP/s -> {r['flop_ms']:.3f} ms; "
          f"ratio {r['ratio']:.2f}x")
    import json

    print(json.dumps(r))


if __name__ == "__main__":
    main()
