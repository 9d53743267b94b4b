"""Misbehaving environments for the fault tests: a small well-behaved task that goes wrong after
a number of its own steps."""

import gymnasium as gym
import numpy as np


class Faulty(gym.Env):
    """Observation [target, step / 20, 1]; reward 1 when the action points at the target (Discrete:
    action 1 for a positive target; Box: the action's sign); episodes are truncated at 20 steps.

    After ``after`` steps of this instance (counted over its episodes) it misbehaves, by ``fault``:
    ``nan_obs`` / ``inf_obs`` / ``nan_reward`` (a non-finite value from then on), ``raise``
    (``step`` raises RuntimeError), ``shape`` (observations of the wrong shape), ``bounds``
    (observations outside the space's bounds), ``none``.
    ``eval_only``: only instances reset with a seed >= 10,000 (contrl's evaluation envs)
    misbehave. ``once``: only at the step after ``after`` (a glitch). ``box``: a Box(-inf, inf)
    action space (unbounded) instead of Discrete(2).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, fault: str = "none", after: int = 200, eval_only: bool = False, box: bool = False,
                 once: bool = False, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32) if box else gym.spaces.Discrete(2)
        self.fault, self.after, self.eval_only, self.box, self.once = fault, after, eval_only, box, once
        self.steps, self.t, self.target, self.armed = 0, 0, 1.0, not eval_only

    def _faulty(self) -> bool:
        return self.armed and (self.steps == self.after + 1 if self.once else self.steps > self.after)

    def _obs(self):
        obs = np.array([self.target, self.t / 20, 1.0], np.float32)
        if self._faulty():
            if self.fault == "nan_obs":
                obs[1] = np.nan
            elif self.fault == "inf_obs":
                obs[0] = np.inf
            elif self.fault == "shape":
                obs = np.zeros(5, np.float32)
            elif self.fault == "bounds":
                obs[0] *= 3
        return obs

    def render(self):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[:, : 16 if self.target < 0 else 32] = 200
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and self.eval_only:
            self.armed = seed >= 10_000
        self.t, self.target = 0, float(self.np_random.choice([-1.0, 1.0]))
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        if self._faulty() and self.fault == "raise":
            raise RuntimeError(f"simulator exploded at its step {self.steps}")
        pointed = (float(np.asarray(action).reshape(-1)[0]) > 0) if self.box else int(action) == 1
        reward = 1.0 if pointed == (self.target > 0) else 0.0
        if self._faulty() and self.fault == "nan_reward":
            reward = float("nan")
        self.target = float(self.np_random.choice([-1.0, 1.0]))
        return self._obs(), reward, False, self.t >= 20, {}
