"""Vector environments stepped in lock-step: in-process, or in worker subprocesses.

Both back-ends host the same :class:`EnvSlot` objects, so their behaviour is identical:
- auto-reset in the same step (the returned observation is the next episode's first one; the
  last observation of the finished episode is returned in ``final_obs`` for bootstrapping),
- episode return/length bookkeeping on the raw rewards,
- an exact save/restore of each environment: a slot records how its current episode began (the
  seed, or the environment's RNG state before the reset) and the actions taken since, so a
  restored slot replays them and continues bit-for-bit. This is what makes ``--resume`` exact.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from contrl.envs.make import make_env
from contrl.errors import ContrlError, EnvError, Fault, one_line_warnings


@dataclass
class StepResult:
    obs: np.ndarray  # [N, D] float32, next observations (first obs of a new episode after a reset)
    rewards: np.ndarray  # [N] float32, raw env rewards
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    final_obs: np.ndarray  # [N, D] float32, last obs of a finished episode (zeros elsewhere)
    episodes: list  # [(env index, return, length)] of episodes that ended this step


def _rng_of(env):
    return getattr(env.unwrapped, "_np_random", None)


def env_call(env, name: str, index: int, method: str, *args, **kwargs):
    """``env.method(*args, **kwargs)``; whatever the env raises becomes an :class:`EnvError`
    naming it, with the traceback as its details."""
    try:
        return getattr(env, method)(*args, **kwargs)
    except ContrlError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the env raises, reported with its name
        raise env_error(e, name, index, method) from None


def env_error(e: Exception, name: str, index: int, method: str) -> EnvError:
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    return EnvError(f"environment '{name}' (env {index}) raised {type(e).__name__} in {method}(): {msg}",
                    traceback.format_exc())


def check_obs(obs, shape: tuple, name: str, index: int, where: str, space=None) -> None:
    """The shape and kind of an observation against its space (an error); with ``space``, its
    bounds too (a warning, shown once)."""
    a = np.asarray(obs)
    if a.shape != shape or a.dtype.kind not in "biuf":
        raise EnvError(f"environment '{name}' (env {index}) returned an observation of shape {a.shape} ({a.dtype}) "
                       f"at {where}; its observation_space declares {shape}: fix the env or its space")
    if space is not None and not (np.all(a >= space.low) and np.all(a <= space.high)):
        warnings.warn(f"environment '{name}' returns observations outside its observation_space bounds; contrl "
                      f"trains on them as they are (fix the space to silence this)", stacklevel=2)


class EnvSlot:
    """One environment with auto-reset, episode stats and exact save/restore by replay.

    An exception from the env becomes an :class:`EnvError` naming the env (its traceback in the
    error's details); an observation whose shape or kind does not fit the declared space (checked
    at every reset and the first ``CHECKED_STEPS`` steps) a one-line :class:`ContrlError`.
    """

    CHECKED_STEPS = 4

    def __init__(self, env, seed: int, name: str = "env", index: int = 0):
        self.env, self.seed, self.name, self.index = env, seed, name, index
        self.discrete = hasattr(env.action_space, "n")
        self.shape = tuple(env.observation_space.shape)
        self.unchecked = self.CHECKED_STEPS  # steps whose observation is still checked
        self.reset()

    def _call(self, method: str, *args, **kwargs):
        return env_call(self.env, self.name, self.index, method, *args, **kwargs)

    def _check(self, obs, where: str):
        check_obs(obs, self.shape, self.name, self.index, where, self.env.observation_space)
        return obs

    def reset(self) -> np.ndarray:
        obs = self._check(self._call("reset", seed=self.seed)[0], "reset")
        self.start = {"seed": self.seed}
        self.actions: list = []
        self.ep_return, self.ep_len = 0.0, 0
        self.obs = obs
        return obs

    def step(self, action):
        action = int(action) if self.discrete else np.array(action, copy=True)
        try:  # (inline rather than env_call: this is the hot path)
            obs, reward, terminated, truncated, _ = self.env.step(action)
        except ContrlError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the env raises, reported with its name
            raise env_error(e, self.name, self.index, "step") from None
        if self.unchecked:
            self.unchecked -= 1
            self._check(obs, "a step")
        self.actions.append(action)
        self.ep_return += float(reward)
        self.ep_len += 1
        final, episode = None, None
        if terminated or truncated:
            final, episode = obs, (self.ep_return, self.ep_len)
            rng = _rng_of(self.env)
            self.start = {"rng": json.dumps(rng.bit_generator.state)} if rng is not None else {"unseeded": True}
            obs = self._check(self._call("reset")[0], "reset")
            self.actions = []
            self.ep_return, self.ep_len = 0.0, 0
        self.obs = obs
        return obs, reward, terminated, truncated, final, episode

    def get_state(self) -> dict:
        return {
            "start": dict(self.start),
            "actions": np.asarray(self.actions).tolist(),
            "ep_return": self.ep_return,
            "ep_len": self.ep_len,
        }

    def set_state(self, state: dict) -> np.ndarray:
        start = state["start"]
        if "seed" in start:
            obs, _ = self._call("reset", seed=start["seed"])
        else:
            if "rng" in start and _rng_of(self.env) is not None:
                gen = np.random.Generator(np.random.PCG64())
                gen.bit_generator.state = json.loads(start["rng"])
                self.env.unwrapped._np_random = gen
            obs, _ = self._call("reset")
        actions = state["actions"]
        for a in actions:
            a = int(a) if self.discrete else np.asarray(a, dtype=self.env.action_space.dtype)
            obs, _, term, trunc, _ = self._call("step", a)
            if term or trunc:
                raise ContrlError("cannot resume: the environment is not deterministic given its seed "
                                  "(replaying the saved actions ended the episode early); start a new run")
        self.start = dict(start)
        self.actions = [int(a) if self.discrete else np.asarray(a, dtype=self.env.action_space.dtype) for a in actions]
        self.ep_return, self.ep_len = float(state["ep_return"]), int(state["ep_len"])
        self.obs = obs
        return obs


def _step_slots(slots: list[EnvSlot], actions) -> list:
    return [s.step(a) for s, a in zip(slots, actions)]


def _worker(conn, env: str, env_kwargs: dict, seeds: list[int], first: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group; the learner handles them (finishes the
    # update, saves a checkpoint) and closes the workers, so they ignore them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    one_line_warnings()
    try:
        from contrl.threads import set_threads

        set_threads(1)
        slots = [EnvSlot(make_env(env, env_kwargs), s, env, first + i) for i, s in enumerate(seeds)]
        conn.send(("ok", [s.obs for s in slots]))
        while True:
            cmd, data = conn.recv()
            if cmd == "step":
                conn.send(("ok", _step_slots(slots, data)))
            elif cmd == "get_state":
                conn.send(("ok", [s.get_state() for s in slots]))
            elif cmd == "set_state":
                conn.send(("ok", [s.set_state(st) for s, st in zip(slots, data)]))
            elif cmd == "close":
                for s in slots:
                    s.env.close()
                conn.send(("ok", None))
                return
    except (KeyboardInterrupt, EOFError):
        return
    except Exception as e:  # noqa: BLE001 - forwarded to the parent
        try:
            details = getattr(e, "details", "") or traceback.format_exc()
            conn.send(("error", (type(e).__name__, str(e), details)))
        except Exception:  # noqa: BLE001
            pass


class VecEnv:
    """N environments in lock-step; ``step(actions)`` returns a :class:`StepResult`."""

    def __init__(self, env: str, env_kwargs: dict, seeds: list[int], subprocess: bool = False,
                 n_procs: Optional[int] = None, first: int = 0):
        """``first``: the index of the first env among the run's (for messages)."""
        self.n, self.env_id, self.first = len(seeds), env, first
        self.subprocess = subprocess
        self._closed = False
        probe = make_env(env, env_kwargs)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        self.obs_dim = int(np.prod(self.observation_space.shape))
        if not subprocess:
            self.slots = [EnvSlot(probe if i == 0 else make_env(env, env_kwargs), s, env, first + i)
                          for i, s in enumerate(seeds)]
            self.obs = self._stack([s.obs for s in self.slots])
            return
        probe.close()
        n_procs = max(1, min(n_procs or self.n, self.n))
        chunks = np.array_split(np.arange(self.n), n_procs)
        self.chunks = [c.tolist() for c in chunks]
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for idx in self.chunks:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, env, env_kwargs, [seeds[i] for i in idx], first + idx[0]),
                            daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        first = self._gather()
        self.obs = self._stack([o for chunk in first for o in chunk])

    def _stack(self, obs_list) -> np.ndarray:
        try:
            return np.asarray(obs_list, dtype=np.float32).reshape(len(obs_list), self.obs_dim)
        except (ValueError, TypeError):  # an env returned another shape or kind than its space declares
            for i, o in enumerate(obs_list):
                check_obs(o, tuple(self.observation_space.shape), self.env_id, self.first + i, "a step")
            raise

    def _gather(self) -> list:
        out = []
        for i, c in enumerate(self.conns):
            try:
                status, data = c.recv()
            except (EOFError, OSError):
                self.procs[i].join(1)
                raise Fault(f"environment subprocess {i} (pid {self.procs[i].pid}) died (exit code "
                            f"{self.procs[i].exitcode})") from None
            if status == "error":
                kind, message, details = data
                if kind == "ContrlError":
                    raise ContrlError(message)
                if kind == "EnvError":
                    raise EnvError(message, details)
                raise Fault(f"environment subprocess {i} failed: {kind}: {message}", details)
            out.append(data)
        return out

    def _call(self, cmd: str, per_env: Optional[list] = None) -> list:
        """Run a command on every slot; returns per-env results in env order."""
        if not self.subprocess:
            if cmd == "step":
                return _step_slots(self.slots, per_env)
            if cmd == "get_state":
                return [s.get_state() for s in self.slots]
            return [s.set_state(st) for s, st in zip(self.slots, per_env)]
        for c, idx in zip(self.conns, self.chunks):
            try:
                c.send((cmd, [per_env[i] for i in idx] if per_env is not None else None))
            except OSError:  # it died: _gather says how
                pass
        return [r for chunk in self._gather() for r in chunk]

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env (``actions`` indexable per env). ``episodes`` is non-empty exactly when
        some env was terminated or truncated (what ``collect`` tests instead of the flags)."""
        obs, rewards, terminated, truncated, finals, ends = zip(*self._call("step", actions))
        obs = self._stack(obs)
        final_obs = np.zeros_like(obs)
        episodes = []
        if ends.count(None) < self.n:  # an episode ended
            for i, end in enumerate(ends):
                if end is not None:
                    final_obs[i] = np.asarray(finals[i], dtype=np.float32).reshape(-1)
                    episodes.append((i, end[0], end[1]))
        self.obs = obs
        return StepResult(obs, np.array(rewards, np.float32), np.array(terminated, bool), np.array(truncated, bool),
                          final_obs, episodes)

    def get_state(self) -> list[dict]:
        return self._call("get_state")

    def set_state(self, states: list[dict]) -> np.ndarray:
        if len(states) != self.n:
            raise ValueError(f"saved state has {len(states)} envs, this run has {self.n}")
        self.obs = self._stack(self._call("set_state", states))
        return self.obs

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.subprocess:
            for s in self.slots:
                s.env.close()
            return
        for c in self.conns:
            try:
                c.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def env_step_seconds(env: str, env_kwargs: dict, steps: int = 200) -> float:
    """Mean wall seconds of one random-action step, to choose in-process vs subprocess."""
    e = make_env(env, env_kwargs)
    env_call(e, env, 0, "reset", seed=0)
    e.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env_call(e, env, 0, "step", e.action_space.sample())
        if term or trunc:
            env_call(e, env, 0, "reset")
    dt = (time.perf_counter() - t0) / steps
    e.close()
    return dt


def make_vec(env: str, env_kwargs: dict, n_envs: int, seed: int, mode: str = "auto",
             log: Callable[[str], None] = lambda s: None) -> VecEnv:
    """Seeds are seed, seed+1, ..., seed+n_envs-1 (recorded in the run's config)."""
    if mode == "auto":
        dt = env_step_seconds(env, env_kwargs)
        mode = "subprocess" if dt > 5e-4 and n_envs > 1 else "inprocess"
        log(f"vec: {mode} ({dt * 1e6:.0f} us per env step)")
    seeds = [seed + i for i in range(n_envs)]
    return VecEnv(env, env_kwargs, seeds, subprocess=(mode == "subprocess"))
