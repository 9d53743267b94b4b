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


class GoalReach(gym.Env):
    """A goal-conditioned task with a Dict observation, as the robotics tasks have (FetchReach):
    ``observation`` (position, velocity), ``achieved_goal`` (position), ``desired_goal`` (goal), all
    in 2-D. Actions are accelerations in [-1, 1]^2; the reward is minus the distance to the goal;
    episodes last 30 steps (truncated). The policy must read the goal from the observation, so an
    agent that ignored the ``desired_goal`` key could not do well: random actions score about -45,
    standing still about -32, PPO after 60k steps about -3.7."""

    def __init__(self):
        box = lambda n: gym.spaces.Box(-5.0, 5.0, (n,), np.float32)  # noqa: E731
        self.observation_space = gym.spaces.Dict({"observation": box(4), "achieved_goal": box(2),
                                                  "desired_goal": box(2)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t = 0

    def _obs(self):
        return {"observation": np.concatenate([self.pos, self.vel]).astype(np.float32),
                "achieved_goal": self.pos.astype(np.float32), "desired_goal": self.goal.astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.vel = np.zeros(2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        self.vel = 0.8 * self.vel + 0.1 * a
        self.pos = np.clip(self.pos + self.vel, -2, 2)
        self.t += 1
        reward = -float(np.linalg.norm(self.pos - self.goal))
        return self._obs(), reward, False, self.t >= 30, {}


class GoalReachRenamed(GoalReach):
    """The same task with the goal under another key: an agent trained on GoalReach must refuse it."""

    def __init__(self):
        super().__init__()
        spaces = dict(self.observation_space.spaces)
        spaces["target"] = spaces.pop("desired_goal")
        self.observation_space = gym.spaces.Dict(spaces)

    def _obs(self):
        obs = super()._obs()
        obs["target"] = obs.pop("desired_goal")
        return obs
