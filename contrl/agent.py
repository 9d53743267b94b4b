"""A trained agent: network + observation statistics + config, able to act and be evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch

from contrl.config import Config, config_from_dict
from contrl.envs.make import DictBox, make_env, space_signature
from contrl.envs.normalize import ObsNormalizer
from contrl.envs.vec import env_call
from contrl.errors import ContrlError
from contrl.nets.acer import ACERNet
from contrl.nets.actor_critic import ActorCritic
from contrl.nets.recurrent import RecurrentActorCritic
from contrl.record.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint


def build_model(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> ActorCritic | RecurrentActorCritic | ACERNet:
    if cfg.rule == "acer":
        cls = ACERNet
    else:
        cls = RecurrentActorCritic if cfg.net.type == "lstm" else ActorCritic
    return cls(int(np.prod(obs_space.shape)), act_space, cfg.net)


class Agent:
    """``act(obs)`` maps raw observations (one, or a batch) to env-ready actions."""

    def __init__(self, config: Config, model: ActorCritic, obs_space: gym.Space, action_space: gym.Space,
                 obs_norm: Optional[ObsNormalizer] = None):
        self.config, self.model = config, model
        self.observation_space, self.action_space = obs_space, action_space
        self.obs_norm = obs_norm
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.obs_dim = int(np.prod(obs_space.shape))
        self.state: Optional[torch.Tensor] = None  # recurrent state carried by act()
        if not self.discrete:
            self._low = action_space.low.astype(np.float32)
            self._high = action_space.high.astype(np.float32)

    # -- acting -----------------------------------------------------------------------------
    def preprocess(self, obs: np.ndarray, update_stats: bool = False) -> torch.Tensor:
        return torch.from_numpy(self.normalize(obs, update_stats))

    def normalize(self, obs: np.ndarray, update_stats: bool = False) -> np.ndarray:
        """``preprocess`` as numpy: raw observations -> the network's ``[n, obs_dim]`` float32 inputs."""
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        if self.obs_norm is not None:
            obs = self.obs_norm(obs, update=update_stats)
        return obs

    def to_env(self, actions) -> np.ndarray:
        """Env-ready actions (from a tensor or a numpy array): ints for Discrete, clipped to the
        bounds for Box."""
        a = actions.numpy() if isinstance(actions, torch.Tensor) else actions
        if self.discrete:
            return a.astype(np.int64)
        return np.minimum(np.maximum(a, self._low), self._high)  # np.clip, without its wrapper's cost

    def policy(self, obs, state: torch.Tensor, deterministic: bool = True,
               generator: Optional[torch.Generator] = None) -> tuple[np.ndarray, torch.Tensor]:
        """Env-ready actions for a batch of raw observations and the next recurrent state
        (``state`` ``[n, model.state_size]``; empty for an MLP)."""
        with torch.inference_mode():
            pi_out, _, state = self.model.step(self.preprocess(obs), state)
            dist = self.model.dist(pi_out)
            a = dist.mode() if deterministic else dist.sample(generator)
        return self.to_env(a), state

    def reset(self) -> None:
        """Forget the recurrent state ``act`` carries (call it when a new episode starts)."""
        self.state = None

    def act(self, obs, deterministic: bool = True, generator: Optional[torch.Generator] = None,
            episode_start=None) -> np.ndarray:
        """Actions for one observation or a batch. A recurrent agent carries its state from call to
        call (``agent.state``); it starts from zero after ``reset()``, for a new batch size, and for
        the envs flagged in ``episode_start`` (a bool or one per env)."""
        single = np.asarray(obs).shape == tuple(self.observation_space.shape)
        n = 1 if single else len(obs)
        if self.state is None or self.state.shape[0] != n:
            self.state = self.model.initial_state(n)
        if episode_start is not None:
            starts = torch.as_tensor(np.asarray(episode_start, bool).reshape(-1))
            if starts.any():
                self.state = self.state.masked_fill(starts.unsqueeze(1), 0.0)
        out, self.state = self.policy(obs, self.state, deterministic, generator)
        return out[0] if single else out

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, episodes: int = 10, seed: int = 10_000, deterministic: bool = True,
                 env: Optional[str] = None, env_kwargs: Optional[dict] = None) -> dict:
        return evaluate(self, episodes, seed, deterministic, env, env_kwargs)

    # -- persistence ------------------------------------------------------------------------
    def payload(self) -> dict:
        return {
            "config": self.config.to_json(),
            "spaces": json.dumps(space_signature(self.observation_space, self.action_space)),
            "model": self.model.state_dict(),
            "obs_norm": json.dumps(self.obs_norm.rms.state_dict()) if self.obs_norm is not None else "",
        }

    def save(self, path: str | Path) -> None:
        save_checkpoint(Path(path), self.payload())


def evaluate(agent: Agent, episodes: int, seed: int, deterministic: bool = True,
             env: Optional[str] = None, env_kwargs: Optional[dict] = None) -> dict:
    """Run ``episodes`` full episodes on up to 8 in-process envs (one batched forward per step).

    Each env runs a fixed share of the episodes, so short episodes are not over-represented.
    Env i is seeded ``seed + i``; stochastic actions draw from a generator seeded with ``seed``.
    A recurrent agent's state is carried per env and starts from zero at every episode.
    """
    if episodes < 1:
        raise ContrlError(f"episodes must be >= 1, got {episodes}")
    env = env or agent.config.env
    env_kwargs = agent.config.env_kwargs if env_kwargs is None else env_kwargs
    k = min(episodes, 8)
    share = [episodes // k + (1 if i < episodes % k else 0) for i in range(k)]
    envs = [make_env(env, env_kwargs) for _ in range(k)]
    check_compatible(agent, envs[0])
    gen = torch.Generator().manual_seed(seed)
    name = f"{env} (evaluation)"
    obs = [env_call(e, name, i, "reset", seed=seed + i)[0] for i, e in enumerate(envs)]
    returns: list[list[float]] = [[] for _ in range(k)]
    lengths: list[list[int]] = [[] for _ in range(k)]
    ep_ret, ep_len = [0.0] * k, [0] * k
    active = [i for i in range(k) if share[i] > 0]
    state = agent.model.initial_state(k)
    while active:
        rows = torch.tensor(active)
        actions, state[rows] = agent.policy(np.stack([obs[i] for i in active]), state[rows], deterministic, gen)
        still = []
        for j, i in enumerate(active):
            o, r, term, trunc, _ = env_call(envs[i], name, i, "step", actions[j])
            ep_ret[i] += float(r)
            ep_len[i] += 1
            if term or trunc:
                returns[i].append(ep_ret[i])
                lengths[i].append(ep_len[i])
                ep_ret[i], ep_len[i] = 0.0, 0
                state[i] = 0.0
                if len(returns[i]) >= share[i]:
                    continue
                o, _ = env_call(envs[i], name, i, "reset")
            obs[i] = o
            still.append(i)
        active = still
    for e in envs:
        e.close()
    rets = [r for rs in returns for r in rs]
    lens = [n for ns in lengths for n in ns]
    return {"mean": float(np.mean(rets)), "std": float(np.std(rets)), "episodes": len(rets),
            "returns": rets, "lengths": lens, "deterministic": deterministic, "seed": seed}


def check_compatible(agent: Agent, env: gym.Env) -> None:
    want = space_signature(agent.observation_space, agent.action_space)
    have = space_signature(env.observation_space, env.action_space)
    if want.get("obs_keys") != have.get("obs_keys"):
        raise ContrlError(f"checkpoint observation keys {want.get('obs_keys')} do not match the env's "
                          f"{have.get('obs_keys')}; use the env the agent was trained on")
    if want["obs_shape"] != have["obs_shape"] or want["action"] != have["action"]:
        raise ContrlError(
            f"checkpoint spaces do not match the env: checkpoint obs {want['obs_shape']} action "
            f"{want['action']['type']} vs env obs {have['obs_shape']} action {have['action']['type']}; "
            f"use the env the agent was trained on"
        )


def _spaces_from_signature(sig: dict) -> tuple[gym.Space, gym.Space]:
    obs = gym.spaces.Box(-np.inf, np.inf, tuple(sig["obs_shape"]), np.float32)
    if sig.get("obs_keys"):
        obs = DictBox(sig["obs_keys"], obs.low, obs.high)
    a = sig["action"]
    if a["type"] == "discrete":
        return obs, gym.spaces.Discrete(a["n"])
    return obs, gym.spaces.Box(np.array(a["low"], np.float32), np.array(a["high"], np.float32), dtype=np.float32)


def agent_from_checkpoint(data: dict, path: Path) -> Agent:
    try:
        cfg = config_from_dict(data["config"])
        obs_space, act_space = _spaces_from_signature(data["spaces"])
        model = build_model(cfg, obs_space, act_space)
        model.load_state_dict(data["model"])
    except ContrlError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ContrlError(f"checkpoint '{path}' does not fit its own config ({type(e).__name__}); use another checkpoint") from None
    obs_norm = None
    if data.get("obs_norm"):
        obs_norm = ObsNormalizer(int(np.prod(obs_space.shape)), cfg.clip_obs)
        obs_norm.rms.load_state_dict(json.loads(data["obs_norm"]))
    model.eval()
    return Agent(cfg, model, obs_space, act_space, obs_norm)


def load(path: str | Path, prefer: str = "best") -> Agent:
    """Load an agent from a checkpoint file or a run folder (best.pt, else latest.pt)."""
    ckpt = find_checkpoint(path, prefer)
    return agent_from_checkpoint(load_checkpoint(ckpt), ckpt)
