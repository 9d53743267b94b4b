"""contrl vs Stable-Baselines3 (PPO, A2C, recurrent PPO), identical hyper-parameters, side by side.

    pip install -e ".[bench]"
    python benchmarks/vs_sb3.py --algo ppo --env LunarLander-v3 --steps 1000000 --seeds 0 1 2
    python benchmarks/vs_sb3.py --algo a2c --env LunarLander-v3 --steps 200000 1000000 --seeds 0 1 2
    python benchmarks/vs_sb3.py --algo ppo-lstm --env LunarLander-v3 --steps 49152 --seeds 0 [--lstm-hidden 64]
    python benchmarks/vs_sb3.py --algo ppo --env HalfCheetah-v5 --steps 100000 --seeds 0   (or Hopper-v5)

Both use 1 torch thread, in-process envs, 64x64 tanh MLPs for pi and V with orthogonal init, and
the RL zoo's LunarLander values:
- ppo: 16 envs, n_steps 1024, batch 64, 4 epochs, gamma 0.999, lambda 0.98, ent 0.01, lr 3e-4.
- a2c: 8 envs, n_steps 5, gamma 0.995, lr 8.3e-4 decaying linearly to 0 over the run, ent 1e-5,
  vf 0.5, grad norm 0.5, RMSprop with TensorFlow's epsilon placement in both (SB3's
  RMSpropTFLike, alpha 0.99, eps 1e-5).
- ppo-lstm: the ppo values above with sb3-contrib's RecurrentPPO "MlpLstmPolicy" defaults:
  LSTM(obs, 256) (or --lstm-hidden) for the actor and another for the critic, then 64x64 tanh MLPs, orthogonal
  init; contrl: ``--net lstm`` with net.hidden=[] lstm_hidden=256 critic_lstm=true
  post_hidden=[64,64] and seq_len=64 (RecurrentPPO's sequences are cut at minibatch edges, so
  at most batch_size=64 long). contrl's MLP PPO with the same values runs too (LSTM/MLP ratio).
- ppo on HalfCheetah-v5 / Hopper-v5: the RL zoo's tuned MuJoCo values for the env (``MUJOCO``;
  the zoo tuned them on the -v3 envs): 1 env, observation and reward normalisation (SB3's
  VecNormalize, contrl's norm_obs/norm_reward; the evaluation normalises with the trained
  statistics), two 256x256 ReLU MLPs without orthogonal init, initial log-std -2.
For each budget and seed the libraries run one after the other; the script prints one JSON line
per run and a table of ratios. Final return: 10 deterministic episodes, env seeds 20000+.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

HP = {
    "ppo": dict(n_envs=16, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98, ent_coef=0.01,
                lr=3e-4, clip_range=0.2, vf_coef=0.5, max_grad_norm=0.5),
    "ppo-lstm": dict(n_envs=16, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98,
                     ent_coef=0.01, lr=3e-4, clip_range=0.2, vf_coef=0.5, max_grad_norm=0.5),
    "a2c": dict(n_envs=8, n_steps=5, gamma=0.995, gae_lambda=1.0, lr=8.3e-4, anneal_lr=True, ent_coef=1e-5,
                vf_coef=0.5, max_grad_norm=0.5, optimizer="rmsprop", alpha=0.99, eps=1e-5),
}


# The RL zoo's PPO values for MuJoCo (hyperparams/ppo.yml, HalfCheetah-v3 / Hopper-v3), on top of HP["ppo"]
_ZOO_MUJOCO_NET = dict(normalize=True, hidden=[256, 256], activation="relu", ortho_init=False, log_std_init=-2.0)
MUJOCO = {
    "HalfCheetah-v5": dict(n_envs=1, n_steps=512, batch_size=64, n_epochs=20, gamma=0.98, gae_lambda=0.92,
                           ent_coef=0.000401762, lr=2.0633e-5, clip_range=0.1, vf_coef=0.58096, max_grad_norm=0.8,
                           **_ZOO_MUJOCO_NET),
    "Hopper-v5": dict(n_envs=1, n_steps=512, batch_size=32, n_epochs=5, gamma=0.999, gae_lambda=0.99,
                      ent_coef=0.00229519, lr=9.80828e-5, clip_range=0.2, vf_coef=0.835671, max_grad_norm=0.7,
                      **_ZOO_MUJOCO_NET),
}
_NET_KEYS = ("normalize", "hidden", "activation", "ortho_init", "log_std_init")


def hp(algo: str, env: str) -> dict:
    """The values both libraries get: the algorithm's, with the env's own where it has them."""
    return {**HP[algo], **(MUJOCO.get(env, {}) if algo == "ppo" else {})}


def contrl_overrides(algo: str, env: str) -> dict:
    h = hp(algo, env)
    out = {k: v for k, v in h.items() if k not in _NET_KEYS}
    if h.get("normalize"):
        out.update(norm_obs=True, norm_reward=True)
    out.update({f"net.{k}": h[k] for k in _NET_KEYS[1:] if k in h})
    return out


LSTM_NET = {"net.hidden": [], "net.lstm_hidden": 256, "net.critic_lstm": True, "net.post_hidden": [64, 64],
            "net.seq_len": 64}


LSTM_HIDDEN = [256]  # --lstm-hidden: the LSTM size of both libraries (RecurrentPPO's default 256)


def run_contrl(algo: str, env: str, steps: int, seed: int, mlp: bool = False) -> dict:
    from contrl.api import train

    lstm = algo == "ppo-lstm" and not mlp
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        agent = train(algo.replace("-lstm", ""), env, steps=steps, seed=seed, out=f"{d}/run", quiet=True,
                      tensorboard=False, net="lstm" if lstm else "mlp",
                      overrides={**contrl_overrides(algo, env), **(LSTM_NET if lstm else {}),
                                 **({"net.lstm_hidden": LSTM_HIDDEN[0]} if lstm else {}), "vec": "inprocess", "eval_every": 10**9,
                                 "eval_episodes": 1, "final_eval_episodes": 0})
        wall = time.time() - t0
        ev = agent.evaluate(10, seed=20_000)
    return {"lib": "contrl-mlp" if mlp else "contrl", "algo": algo, "seed": seed, "budget": steps,
            "steps": agent.summary["steps"], "wall_s": wall, "steps_per_s": agent.summary["steps"] / wall,
            "final_return": ev["mean"]}


def run_contrl_mlp(algo: str, env: str, steps: int, seed: int) -> dict:
    return run_contrl(algo, env, steps, seed, mlp=True)


def _sb3_model(algo: str, env: str, venv, seed: int):
    hp_ = hp(algo, env)
    common = dict(n_steps=hp_["n_steps"], gamma=hp_["gamma"], gae_lambda=hp_["gae_lambda"], ent_coef=hp_["ent_coef"],
                  vf_coef=hp_["vf_coef"], max_grad_norm=hp_["max_grad_norm"], seed=seed, device="cpu", verbose=0)
    if algo == "ppo-lstm":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO("MlpLstmPolicy", venv, batch_size=hp_["batch_size"], n_epochs=hp_["n_epochs"],
                            learning_rate=hp_["lr"], clip_range=hp_["clip_range"],
                            policy_kwargs=dict(lstm_hidden_size=LSTM_HIDDEN[0]), **common)
    if algo == "ppo":
        from stable_baselines3 import PPO

        kwargs = {}
        if "hidden" in hp_:
            from torch import nn

            kwargs["policy_kwargs"] = dict(log_std_init=hp_["log_std_init"], ortho_init=hp_["ortho_init"],
                                           activation_fn={"relu": nn.ReLU, "tanh": nn.Tanh}[hp_["activation"]],
                                           net_arch=dict(pi=hp_["hidden"], vf=hp_["hidden"]))
        return PPO("MlpPolicy", venv, batch_size=hp_["batch_size"], n_epochs=hp_["n_epochs"], learning_rate=hp_["lr"],
                   clip_range=hp_["clip_range"], **kwargs, **common)
    from stable_baselines3 import A2C
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    lr = hp_["lr"]
    return A2C("MlpPolicy", venv, learning_rate=lambda remaining: lr * remaining, use_rms_prop=True,
               rms_prop_eps=hp_["eps"], normalize_advantage=False,
               policy_kwargs=dict(optimizer_class=RMSpropTFLike,
                                  optimizer_kwargs=dict(alpha=hp_["alpha"], eps=hp_["eps"], weight_decay=0)),
               **common)


def run_sb3(algo: str, env: str, steps: int, seed: int) -> dict:
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    hp_ = hp(algo, env)
    venv = make_vec_env(env, n_envs=hp_["n_envs"], seed=seed)
    if hp_.get("normalize"):
        from stable_baselines3.common.vec_env import VecNormalize

        venv = VecNormalize(venv, gamma=hp_["gamma"])
    model = _sb3_model(algo, env, venv, seed)
    t0 = time.time()
    model.learn(total_timesteps=steps)
    wall = time.time() - t0
    if hp_.get("normalize"):
        venv.training = False
    prep = venv.normalize_obs if hp_.get("normalize") else (lambda o: o)  # the trained statistics
    rets = []
    for i in range(10):
        e = gym.make(env)
        obs, _ = e.reset(seed=20_000 + i)
        done, total, state, start = False, 0.0, None, np.ones(1, bool)
        while not done:
            if algo == "ppo-lstm":
                a, state = model.predict(prep(obs), state=state, episode_start=start, deterministic=True)
                start = np.zeros(1, bool)
            else:
                a, _ = model.predict(prep(obs), deterministic=True)
            obs, r, term, trunc, _ = e.step(a)
            total += float(r)
            done = term or trunc
        rets.append(total)
    return {"lib": "sb3-contrib" if algo == "ppo-lstm" else "sb3", "algo": algo, "seed": seed, "budget": steps, "steps": int(model.num_timesteps),
            "wall_s": wall, "steps_per_s": model.num_timesteps / wall, "final_return": float(np.mean(rets))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=sorted(HP), default="ppo")
    ap.add_argument("--env", default="LunarLander-v3")
    ap.add_argument("--steps", type=int, nargs="+", default=[1_000_000], help="one or more budgets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lstm-hidden", type=int, default=256, help="ppo-lstm: LSTM size in both libraries")
    args = ap.parse_args()
    LSTM_HIDDEN[0] = args.lstm_hidden
    torch.set_num_threads(1)
    results = []
    runs = (run_contrl, run_sb3, run_contrl_mlp) if args.algo == "ppo-lstm" else (run_contrl, run_sb3)
    for steps in args.steps:
        for seed in args.seeds:
            for fn in runs:
                r = fn(args.algo, args.env, steps, seed)
                print(json.dumps(r), flush=True)
                results.append(r)
    for steps in args.steps:
        lstm = f", LSTM {args.lstm_hidden}" if args.algo == "ppo-lstm" else ""
        print(f"-- {args.algo} on {args.env}, {steps:,} steps, seeds {args.seeds}{lstm}")
        sps = {}
        for lib in sorted({r["lib"] for r in results}):
            rs = [r for r in results if r["lib"] == lib and r["budget"] == steps]
            sps[lib] = np.mean([r["steps_per_s"] for r in rs])
            print(f"{lib:11s} steps/s {sps[lib]:8,.0f}  final return "
                  f"{np.mean([r['final_return'] for r in rs]):7.1f} +- {np.std([r['final_return'] for r in rs]):.1f}")
        peer = "sb3-contrib" if args.algo == "ppo-lstm" else "sb3"
        print(f"steps/s ratio contrl/{peer}: {sps['contrl'] / sps[peer]:.2f}x")
        if "contrl-mlp" in sps:
            print(f"steps/s ratio contrl LSTM / contrl MLP: {sps['contrl'] / sps['contrl-mlp']:.2f}")


if __name__ == "__main__":
    main()
