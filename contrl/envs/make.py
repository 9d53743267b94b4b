"""Making environments: Gymnasium ids or ``package.module:ClassName``, with clear errors."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from contrl.envs import pomdp
from contrl.errors import ContrlError

pomdp.register()  # the velocity-masked ids (contrl/CartPoleNoVel-v1, ...), in every process that makes envs

warnings.filterwarnings("ignore", message=".*compiler attribute.*")

_mujoco_routed = False


def _route_mujoco_warnings() -> None:
    """MuJoCo >= 4 prints its warnings straight to stderr and appends them to MUJOCO_LOG.TXT in the
    working directory (HalfCheetah's model alone: one ``settotalmass is deprecated`` line per env
    made). Route them through Python's warnings instead, so each shows once as ``contrl: warning:
    MuJoCo: ...``, and drop the compiler's deprecation notes about the models Gymnasium ships,
    which say nothing about the run. Once per process; only for envs that use MuJoCo."""
    global _mujoco_routed
    if _mujoco_routed:
        return
    _mujoco_routed = True
    try:
        import mujoco
    except ImportError:
        return
    if not hasattr(mujoco, "set_mju_user_warning"):
        return

    def warn(msg: str) -> None:
        if "compiler attribute" in msg and "deprecated" in msg:
            return
        warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(warn)


def _uses_mujoco(env_id: str) -> bool:
    spec = gym.registry.get(env_id)
    entry = getattr(spec, "entry_point", "")
    entry = entry if isinstance(entry, str) else f"{getattr(entry, '__module__', '')}.{getattr(entry, '__name__', '')}"
    return "mujoco" in entry.lower() or "mujoco" in sys.modules


def _suggest(env_id: str) -> str:
    ids = list(gym.registry.keys())
    base = env_id.rsplit("-v", 1)[0]
    same_name = sorted(i for i in ids if i.rsplit("-v", 1)[0] == base)
    close = same_name or difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close[:3])}?" if close else "; see gymnasium.registry for ids"


def resolve_env(env: str) -> str:
    """Return a registered Gymnasium id for ``env`` (registering ``module:Class`` on the fly)."""
    if ":" in env and not env.startswith("ale_py"):
        module_name, _, cls_name = env.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise ContrlError(
                f"cannot import module '{module_name}' for env '{env}' ({type(e).__name__}: {e}); "
                f"check the module path and that it is installed"
            ) from None
        if cls_name in gym.registry:  # gymnasium's own "module:EnvId" form (gymnasium_robotics:FetchReach-v4)
            return cls_name
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise ContrlError(f"module '{module_name}' has no class '{cls_name}'; check the name after ':'")
        env_id = f"contrl-custom/{module_name}.{cls_name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=env)
        return env_id
    if env not in gym.registry:
        raise ContrlError(f"unknown environment '{env}'{_suggest(env)}")
    return env


class DictBox(gym.spaces.Box):
    """The Box a Dict observation space is flattened to; ``keys`` records [(key, shape)] in order."""

    def __init__(self, keys: list, low, high):
        super().__init__(low, high, dtype=np.float32)
        self.keys = [(k, list(shape)) for k, shape in keys]


class FlattenDict(gym.ObservationWrapper):
    """Dict observations (goal-conditioned tasks: observation, achieved_goal, desired_goal) as one
    float32 vector: each key's Box flattened and concatenated in the space's key order, which is
    recorded (``observation_space.keys``) in checkpoints and checked when an agent is loaded."""

    def __init__(self, env: gym.Env, env_name: str):
        super().__init__(env)
        space = env.observation_space
        bad = [k for k, sub in space.spaces.items() if not isinstance(sub, gym.spaces.Box)]
        if bad:
            raise ContrlError(f"observation key '{bad[0]}' of '{env_name}' is {space.spaces[bad[0]]}; contrl flattens "
                              f"Dict observations whose values are Box spaces only")
        self._keys = list(space.spaces)
        lows = [np.asarray(space.spaces[k].low, np.float32).reshape(-1) for k in self._keys]
        highs = [np.asarray(space.spaces[k].high, np.float32).reshape(-1) for k in self._keys]
        self.observation_space = DictBox([(k, space.spaces[k].shape) for k in self._keys],
                                         np.concatenate(lows), np.concatenate(highs))

    def observation(self, obs):
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in self._keys])


def make_env(env: str, env_kwargs: Optional[dict] = None, render_mode: Optional[str] = None) -> gym.Env:
    env_id = resolve_env(env)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if _uses_mujoco(env_id):
        _route_mujoco_warnings()
    try:
        e = gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise ContrlError(f"environment '{env}' needs an extra package: {str(err).splitlines()[0]}") from None
    except TypeError as err:
        raise ContrlError(f"bad --env-kwargs for '{env}': {err}; check the keyword names") from None
    except gym.error.Error as err:
        raise ContrlError(f"cannot make environment '{env}': {err}") from None
    if isinstance(e.observation_space, gym.spaces.Dict):
        e = FlattenDict(e, env)
    check_spaces(e.observation_space, e.action_space, env)
    return e


def env_spaces(env: str, env_kwargs: Optional[dict] = None) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of an env, made and closed (a bad env fails here)."""
    e = make_env(env, env_kwargs)
    e.close()
    return e.observation_space, e.action_space


def check_spaces(obs_space: Any, act_space: Any, env: str = "env") -> None:
    if not isinstance(obs_space, gym.spaces.Box):
        raise ContrlError(
            f"observation space {obs_space} of '{env}' is not supported; contrl supports Box "
            f"(vector) observations and Dicts of them: flatten other spaces with gymnasium.wrappers.FlattenObservation"
        )
    if len(obs_space.shape) > 1 and np.prod(obs_space.shape) > 4096:
        raise ContrlError(
            f"observation space {obs_space} of '{env}' looks like images, which are not supported; "
            f"use a vector-observation env"
        )
    if isinstance(act_space, gym.spaces.Discrete):
        return
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return  # infinite bounds too: actions are clipped only where a bound is finite
    raise ContrlError(
        f"action space {act_space} of '{env}' is not supported; contrl supports Discrete and 1-D Box actions"
    )


def space_signature(obs_space: Any, act_space: Any) -> dict:
    """A JSON description of the spaces, stored in checkpoints and compared on load."""
    sig: dict = {"obs_shape": list(obs_space.shape)}
    if getattr(obs_space, "keys", None) is not None and isinstance(obs_space, DictBox):
        sig["obs_keys"] = obs_space.keys  # a flattened Dict: which key is where
    if isinstance(act_space, gym.spaces.Discrete):
        sig["action"] = {"type": "discrete", "n": int(act_space.n)}
    else:
        sig["action"] = {
            "type": "box",
            "shape": list(act_space.shape),
            "low": [float(x) for x in act_space.low],
            "high": [float(x) for x in act_space.high],
        }
    return sig


def headless() -> bool:
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def prepare_headless_rendering() -> None:
    """Pick software/EGL back-ends so rendering works without a screen."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
