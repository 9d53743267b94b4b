"""Small environments for analytic tests."""

import gymnasium as gym
import numpy as np


class ConstantEnv(gym.Env):
    """Reward 1 every step, one constant observation, never terminates on its own.

    Under a time limit of L steps (truncation) the true value of the (only) state is
    1 / (1 - gamma): the task goes on, the episode is only cut. With ``terminate=True`` the
    episode really ends after L steps and the value seen from the constant observation is the
    average over the episode's steps of (1 - gamma^(L - t)) / (1 - gamma).
    """

    def __init__(self, limit: int = 5, terminate: bool = False):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.limit, self.terminate = limit, terminate
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.5, -0.5], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.limit
        return np.array([0.5, -0.5], np.float32), 1.0, done and self.terminate, done and not self.terminate, {}


class FailingEnv(gym.Env):
    """CartPole-like spaces; ``step`` raises after ``fail_after`` steps (a crashing simulator)."""

    def __init__(self, fail_after: int = 30):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.fail_after, self.t = fail_after, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t > self.fail_after:
            raise RuntimeError("simulator exploded")
        return np.zeros(4, np.float32), 1.0, False, self.t % 10 == 0, {}


class RecallEnv(gym.Env):
    """A memory task. The first observation shows a cue (+1 or -1); for the next ``delay`` steps
    the observation carries no cue; at the last step (flagged in the observation) the action
    must name the cue: reward +1 if it does, -1 if not, 0 at every other step.

    The reward depends on an observation ``delay`` steps back, so a memoryless policy is at
    chance (expected return 0) and a policy with memory can reach 1.
    Observation: [cue (only at t = 0), decision flag].
    """

    def __init__(self, delay: int = 5):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.delay, self.t, self.cue = delay, 0, 1

    def _obs(self):
        return np.array([self.cue if self.t == 0 else 0.0, 1.0 if self.t == self.delay else 0.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.choice([-1, 1]))
        return self._obs(), {}

    def step(self, action):
        if self.t < self.delay:
            self.t += 1
            return self._obs(), 0.0, False, False, {}
        reward = 1.0 if (2 * int(action) - 1) == self.cue else -1.0
        return self._obs(), reward, True, False, {}
