"""Partially observable versions of classic tasks: the velocities masked out of the observation.

Memory (an LSTM) helps exactly where the observation is not the whole state; these tasks show
it. Each is registered as a Gymnasium id (``contrl/CartPoleNoVel-v1``, ...) and reached from
its base env with ``--mask-velocity``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from contrl.errors import ContrlError

# observation indices that are velocities, per base env name (version dropped)
VELOCITY_DIMS = {
    "CartPole": (1, 3),  # x, x_dot, theta, theta_dot
    "Pendulum": (2,),  # cos(theta), sin(theta), theta_dot
    "LunarLander": (2, 3, 5),  # x, y, vx, vy, angle, angular velocity, leg contacts
    "MountainCarContinuous": (1,),  # position, velocity
}

# registered id -> (base id, extra gymnasium.make kwargs)
MASKED = {
    "contrl/CartPoleNoVel-v1": ("CartPole-v1", {}),
    "contrl/PendulumNoVel-v1": ("Pendulum-v1", {}),
    "contrl/LunarLanderNoVel-v3": ("LunarLander-v3", {}),
    "contrl/LunarLanderContinuousNoVel-v3": ("LunarLander-v3", {"continuous": True}),
    "contrl/MountainCarContinuousNoVel-v0": ("MountainCarContinuous-v0", {}),
}


class MaskVelocity(gym.ObservationWrapper):
    """Drops the velocity entries of the observation (see ``VELOCITY_DIMS``)."""

    def __init__(self, env: gym.Env, velocity_dims: tuple):
        super().__init__(env)
        space = env.observation_space
        self.keep = np.array([i for i in range(space.shape[0]) if i not in velocity_dims])
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation):
        return observation[self.keep]


def _base_name(env_id: str) -> str:
    return env_id.split("/")[-1].rsplit("-v", 1)[0]


def make_masked(base: str, **kwargs) -> gym.Env:
    """Entry point of the registered ids: the base env with its velocities masked."""
    return MaskVelocity(gym.make(base, **kwargs), VELOCITY_DIMS[_base_name(base)])


def register() -> None:
    for env_id, (base, extra) in MASKED.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=make_masked, kwargs={"base": base, **extra})


def base_of(env_id: str) -> tuple[str, dict]:
    """(base id, extra kwargs) of a masked id; other ids map to themselves."""
    return MASKED.get(env_id, (env_id, {}))


def masked_id(env_id: str, env_kwargs: dict) -> tuple[str, dict]:
    """The registered masked id for ``env_id`` (and the kwargs left to pass), for --mask-velocity."""
    if env_id in MASKED:
        return env_id, env_kwargs
    kwargs = dict(env_kwargs)
    for mid, (base, extra) in MASKED.items():
        if base == env_id and all(kwargs.get(k) == v for k, v in extra.items()) and (
                extra or not kwargs.get("continuous")):
            for k in extra:
                kwargs.pop(k)
            return mid, kwargs
    known = sorted({base for base, _ in MASKED.values()})
    raise ContrlError(f"--mask-velocity knows the velocities of {', '.join(known)} only, not '{env_id}'; "
                      f"use one of those or wrap your env yourself")
