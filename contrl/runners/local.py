"""The synchronous runner's envs backend: ``n_envs`` envs in lock-step, one learner.

An iteration collects a ``[T, N]`` rollout from a vector env (in this process, or in env
subprocesses) with the learner's own model and runs the update rule on it. A checkpoint holds
each env's replayable state, the carried recurrent state and the reward scaler, so resume is
exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from contrl.config import Config
from contrl.envs.normalize import ReplayInputs, RewardScaler
from contrl.envs.vec import make_vec
from contrl.errors import Fault
from contrl.runners.collect import collect, episode_rows
from contrl.runners.loop import Envs


class LocalEnvs(Envs):
    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        self.cfg = cfg
        self.venv = make_vec(cfg.env, cfg.env_kwargs, cfg.n_envs, cfg.seed, cfg.vec, log=log)
        self.observation_space, self.action_space = self.venv.observation_space, self.venv.action_space
        self.n = self.n_per_update = self.venv.n
        self.steps_per_iteration = cfg.algo_config().n_steps * self.n

    def start(self, agent, rule, generator, episodes) -> None:
        super().start(agent, rule, generator, episodes)
        self.rollout = rule.new_rollout(self.n)
        self.rnn_state = agent.model.initial_state(self.n)  # recurrent state carried across rollouts
        self.scaler = RewardScaler(self.n, rule.cfg.gamma) if self.cfg.norm_reward else None
        rule.inputs = ReplayInputs(agent.obs_norm, self.scaler)

    def collect(self) -> list:
        """Fill ``self.rollout``; its episodes as ``collect()`` returns them."""
        return collect(self.agent, self.venv, self.rollout, self.gen, self.scaler, None, self.rnn_state)

    def iterate(self, step: int) -> tuple[dict, int, int]:
        try:
            episodes = self.collect()
        except Fault as e:  # the step it happened at: collect() knows the rollout's t
            e.step = step + (getattr(e, "t", -1) + 1) * self.n
            raise
        self.episodes(episode_rows(episodes, step, self.n))
        return self.rule.update(self.rollout, self.gen), self.rollout.T * self.n, 1

    def state(self) -> dict:
        scaler = json.dumps(self.scaler.state_dict()) if self.scaler is not None else ""
        return {"envs": json.dumps(self.venv.get_state()), "rnn_state": self.rnn_state.clone(),
                "reward_scaler": scaler}

    def load_state(self, ts: dict) -> None:
        self.venv.set_state(json.loads(ts["envs"]))
        self.rnn_state.copy_(ts["rnn_state"])
        if self.scaler is not None:
            self.scaler.load_state_dict(json.loads(ts["reward_scaler"]))

    def summary(self) -> dict:
        return {"env_seeds": [self.cfg.seed + i for i in range(self.n)]}

    def close(self) -> None:
        self.venv.close()
