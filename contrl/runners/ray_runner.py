"""The Ray runner (``--runner ray``): the same algorithms with their envs on Ray actors.

Ray is an optional extra (``pip install "contrl[ray]"``); nothing here imports it until a run
asks for this runner. Without ``ray_address`` a local Ray starts and stops with the run (one
that is already running in the process, e.g. a test's ``ray.init(num_cpus=2)``, is used and
left running); ``--ray-address auto|HOST:PORT`` joins an existing cluster.

Two patterns, both driven by the synchronous runner's loop (logs, evaluation, checkpoints,
resume and Ctrl-C are the same code):

* Synchronous (ppo, a2c, acer): ``workers`` rollout actors, each stepping its own vector of
  ``n_envs`` envs with the current policy weights (one ``ray.put`` per iteration, shared through
  the object store) and returning its ``[T, n_envs]`` rollout. The learner places them side by
  side into one ``[T, workers * n_envs]`` rollout and runs the update rule on it, exactly as the
  synchronous runner does on its own envs. Actor ``j`` steps the env seeds the synchronous
  runner would give envs ``j * n_envs ...``. Observation statistics: each actor normalises with
  the learner's statistics plus what it has seen in the rollout and returns what it has seen;
  the learner merges them. Rewards are scaled by the learner, step by step, as the synchronous
  runner does. A checkpoint holds every actor's env state, recurrent state and generator, so a
  resumed run continues exactly.
* Asynchronous (a3c; acer with ``ray_pattern=async``): ``workers`` gradient actors; each
  computes the gradients of one update of its own with the weights it was sent (A2C: a new
  segment; ACER: a new segment, or one replayed from the actor's own memory) and returns them;
  the learner applies each gradient as it arrives with its optimiser (the one optimiser every
  worker shares; ACER's average network follows on the learner) and sends that worker fresh
  weights. Like the Hogwild runner, this is not reproducible step for step; resume restores
  the model, the optimiser, the observation statistics and the step count, and the workers
  start on fresh seeds (ACER: with empty memories).

Fault tolerance: actors are created with ``max_restarts``; when one dies, Ray restarts it, its
in-flight rollout (or gradient) is discarded, the learner asks it again and the log says so.
Past ``max_restarts`` deaths of one actor the run stops with an error, keeping its last
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from contrl.agent import Agent, build_model
from contrl.algos.a2c import A2C
from contrl.algos.acer import ACER
from contrl.config import Config, config_from_dict
from contrl.envs.make import make_env
from contrl.envs.normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from contrl.envs.vec import VecEnv
from contrl.errors import ContrlError
from contrl.runners.collect import collect
from contrl.runners.sync import SyncRunner, update_from
from contrl.storage.replay import ReplayBuffer, Segment, behaviour_dim
from contrl.storage.rollout import Rollout

ROLLOUT_FIELDS = ("obs", "actions", "logp", "values", "rewards", "dones", "trunc_values", "states",
                  "mu", "final_obs", "terminated")  # [T, n, ...]; ACER's obs_last is [n, D]


def import_ray():
    try:
        import ray
    except ImportError:
        raise ContrlError('--runner ray needs Ray: pip install "contrl[ray]" (or use --runner sync)') from None
    return ray


def to_flat(tensors) -> np.ndarray:
    """Tensors as one float32 vector: Ray ships a numpy array through its object store without
    pickling it, where a state dict costs a pickle per tensor."""
    with torch.no_grad():
        return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()


def from_flat(flat: np.ndarray, tensors) -> None:
    """Copy a ``to_flat`` vector into ``tensors`` (same shapes, same order)."""
    src = torch.from_numpy(np.array(flat)).split([t.numel() for t in tensors])  # a copy: Ray's arrays are read-only
    with torch.no_grad():
        torch._foreach_copy_(list(tensors), [v.view_as(t) for v, t in zip(src, tensors)])


def model_tensors(model) -> list:
    """What a copy of a model needs: its state dict's tensors (parameters and buffers)."""
    return list(model.state_dict(keep_vars=True).values())


def actor_seeds(cfg: Config, j: int) -> list[int]:
    """The env seeds of actor j: those the synchronous runner gives envs j*n_envs ... ."""
    return [cfg.seed + j * cfg.n_envs + i for i in range(cfg.n_envs)]


# -- the actors (plain classes; ray.remote wraps them when a run starts) -------------------------
class SeenObsNormalizer(ObsNormalizer):
    """An actor's normaliser: the learner's statistics as of the request, plus what the actor
    has seen since; ``seen`` (what it returns) is only the latter."""

    def begin(self, stats: dict) -> None:
        self.rms.load_state_dict(stats)
        self.seen = RunningMeanStd(self.rms.mean.shape, epsilon=0.0)

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if update:
            self.seen.update(obs)
        return super().__call__(obs, update)


class _EnvActor:
    """What both kinds of actor hold: ``n_envs`` envs, a copy of the model, a generator."""

    def __init__(self, cfg_json: str, seeds: list[int], torch_seed: int, threads: int):
        import ray

        torch.set_num_threads(threads)
        cfg = self.cfg = config_from_dict(json.loads(cfg_json))
        # a restarted actor says so in its next result (it may have died between two requests)
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if self.restarted:  # do not replay the episodes of the first incarnation
            shift = int(np.random.SeedSequence().entropy % 1_000_000_000)
            seeds, torch_seed = [s + shift for s in seeds], torch_seed + shift
        self.venv = VecEnv(cfg.env, cfg.env_kwargs, seeds)
        model = build_model(cfg, self.venv.observation_space, self.venv.action_space)
        self.obs_norm = SeenObsNormalizer(self.venv.obs_dim, cfg.clip_obs) if cfg.norm_obs else None
        self.agent = Agent(cfg, model, self.venv.observation_space, self.venv.action_space, self.obs_norm)
        self.gen = torch.Generator().manual_seed(torch_seed)
        rule_cfg = cfg.algo_config()
        n = self.venv.n
        act_shape = () if self.agent.discrete else tuple(self.venv.action_space.shape)
        mu_dim = behaviour_dim(self.venv.action_space) if cfg.rule == "acer" else 0
        self.rollout = Rollout(rule_cfg.n_steps, n, self.venv.obs_dim, act_shape, model.state_size, cfg.seq_len, mu_dim)
        self.rnn_state = model.initial_state(n)

    def _collect(self, weights: np.ndarray, obs_stats, scaler=None):
        from_flat(weights, model_tensors(self.agent.model))
        if self.obs_norm is not None:
            self.obs_norm.begin(obs_stats)
        episodes: list = []

        def on_step(t, res):
            episodes.extend((t, env_i, ret, length) for env_i, ret, length in res.episodes)

        last_values = collect(self.agent, self.venv, self.rollout, self.gen, scaler, on_step, self.rnn_state)
        seen = self.obs_norm.seen.state_dict() if self.obs_norm is not None else None
        return last_values, episodes, seen

    def _restarted(self) -> bool:
        restarted, self.restarted = self.restarted, False
        return restarted


class RolloutActor(_EnvActor):
    """Synchronous pattern: returns its ``[T, n_envs]`` rollout with the weights it is sent."""

    def collect(self, weights: np.ndarray, obs_stats) -> dict:
        last_values, episodes, seen = self._collect(weights, obs_stats)
        r = self.rollout
        fields = {name: getattr(r, name) for name in ROLLOUT_FIELDS if getattr(r, name) is not None}
        if not self.agent.model.recurrent:
            fields.pop("states")
        if r.obs_last is not None:
            fields["obs_last"] = r.obs_last
        return {"rollout": fields, "last_values": last_values, "episodes": episodes, "seen": seen,
                "restarted": self._restarted()}

    def get_state(self) -> dict:
        return {"envs": self.venv.get_state(), "rnn_state": self.rnn_state.clone(), "generator": self.gen.get_state()}

    def set_state(self, state: dict) -> None:
        self.venv.set_state(state["envs"])
        self.rnn_state.copy_(state["rnn_state"])
        self.gen.set_state(state["generator"])


class GradientActor(_EnvActor):
    """Asynchronous pattern: returns the gradients of one update of its own.

    A3C: the A2C gradients of a new segment. ACER (as on the Hogwild runner): the actor has its
    own replay memory; a request is answered with the on-policy gradients of a new segment, or,
    while the Poisson(replay_ratio) replayed updates drawn after a segment are not all done,
    with the gradients of one replayed segment (no env steps), each with the weights and the
    average network of that request."""

    def __init__(self, cfg_json: str, seeds: list[int], torch_seed: int, threads: int):
        super().__init__(cfg_json, seeds, torch_seed, threads)
        rule_cfg = self.cfg.algo_config()
        self.scaler = RewardScaler(self.venv.n, rule_cfg.gamma) if self.cfg.norm_reward else None
        model, n = self.agent.model, self.venv.n
        if self.cfg.rule == "acer":
            r = self.rollout
            self.rule = ACER(model, rule_cfg, n, self.venv.obs_dim, tuple(r.actions.shape[2:]), r.mu.shape[-1])
        else:
            self.rule = A2C(model, rule_cfg)
        self.replays = 0  # ACER: replayed updates still to do for the last segment

    def gradients(self, weights: dict, obs_stats) -> dict:
        rule, acer = self.rule, self.cfg.rule == "acer"
        if weights["avg"] is not None:
            from_flat(weights["avg"], model_tensors(rule.avg))
        steps, episodes, seen = 0, [], None
        if self.replays > 0:
            from_flat(weights["model"], model_tensors(self.agent.model))
            self.replays -= 1
            stats = rule.gradients(rule.replay.sample(self.venv.n, self.gen), self.gen)
        else:
            last_values, episodes, seen = self._collect(weights["model"], obs_stats, self.scaler)
            steps = self.rollout.T * self.venv.n
            if acer:
                seg = Segment.from_rollout(self.rollout)
                stats = rule.gradients(seg, self.gen)
                self.replays = rule.store(seg, self.gen)
            else:
                self.rollout.finish(last_values, rule.cfg.gamma, rule.cfg.gae_lambda)
                stats = rule.gradients(self.rollout)
        grads = to_flat([q.grad if q.grad is not None else torch.zeros_like(q) for q in rule.params])
        return {"grads": grads, "stats": stats, "steps": steps, "episodes": episodes, "seen": seen,
                "restarted": self._restarted()}


# -- the learner's side ----------------------------------------------------------------------
def report_episodes(episodes: list, on_step) -> None:
    """Episodes (t, env, return, length) to the runner's ``on_step(t, [(env, return, length)])``,
    step by step, as the acting loop reports them."""
    for t in sorted({e[0] for e in episodes}):
        on_step(t, [e[1:] for e in episodes if e[0] == t])


class _RayEnvs:
    """The envs of a Ray run, as the synchronous runner's loop sees them (``LocalEnvs``'s
    methods): starts or joins Ray, creates the actors, and restarts bookkeeping."""

    actor_cls: type = RolloutActor

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        self.ray = ray = import_ray()
        self.cfg, self.log, self.run_dir = cfg, log, run_dir
        probe = make_env(cfg.env, cfg.env_kwargs)  # a bad env fails here, in one line, before any actor starts
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.obs_dim = int(np.prod(self.observation_space.shape))
        self.W, self.k = cfg.workers, cfg.n_envs
        self.n = self.W * self.k
        self.n_per_update = self.k if self.actor_cls is GradientActor else self.n
        self.learner_replay = self.actor_cls is not GradientActor  # ACER's memory: the learner's, or each actor's
        self.restarts = [0] * self.W
        self.counted = [False] * self.W  # a death already counted, whose restarted actor has not answered yet
        self.run_id = uuid.uuid4().hex[:8]  # actor names: contrl-RUNID-J (ray list actors shows them)
        self.owns_ray = False
        self.actors: list = []
        need = self.W * cfg.ray_cpus
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if cfg.ray_address:
                try:
                    ray.init(address=cfg.ray_address, **kwargs)
                except Exception as e:  # noqa: BLE001 - Ray raises several kinds; all mean "not reachable"
                    raise ContrlError(f"cannot join the Ray cluster at '{cfg.ray_address}' ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}); start one with `ray start --head` "
                                      f"or drop --ray-address to run a local Ray") from None
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **kwargs)
            self.owns_ray = True
        have = ray.cluster_resources().get("CPU", 0.0)
        where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "Ray"
        if need > have:
            self.close()
            raise ContrlError(f"{where} has {have:g} CPUs and the run asks for {self.W} actors x ray_cpus "
                              f"{cfg.ray_cpus:g} = {need:g}; lower --workers or ray_cpus, or add nodes")
        log(f"ray {ray.__version__}: {self.W} actors x {self.k} env(s), {cfg.ray_cpus:g} CPU(s) each, on "
            f"{'a local Ray' if self.owns_ray and not cfg.ray_address else where} ({have:g} CPUs)")
        self.next_seed = cfg.seed

    def launch(self) -> None:
        """Create the actors (once; the asynchronous pattern's seeds depend on a resumed state)."""
        if self.actors:
            return
        remote = self.ray.remote(self.actor_cls)
        threads = max(1, int(self.cfg.ray_cpus))
        cfg_json = self.cfg.to_json()
        for j in range(self.W):
            seeds = self.seeds_for(j)
            options = dict(name=f"contrl-{self.run_id}-{j}", num_cpus=self.cfg.ray_cpus,
                           max_restarts=self.cfg.max_restarts, max_task_retries=0)
            self.actors.append(remote.options(**options).remote(cfg_json, seeds, seeds[0] + 7919, threads))

    def seeds_for(self, j: int) -> list[int]:
        return actor_seeds(self.cfg, j)

    def start(self, model) -> None:
        self.recurrent = model.recurrent

    def died(self, j: int, reason: str, logger, what: str) -> None:
        """Count a death of actor j; the run stops past max_restarts."""
        self.restarts[j] += 1
        message = logger.message if logger is not None else self.log
        if self.restarts[j] > self.cfg.max_restarts:
            ckpt = self.run_dir / "checkpoints" / "latest.pt"
            kept = (f"the last checkpoint is kept in {ckpt.parent}; fix the cause and resume with contrl train "
                    f"--resume {self.run_dir}") if ckpt.exists() else "no checkpoint was saved yet"
            raise ContrlError(f"ray actor {j} died {self.restarts[j]} times (last: {reason}); stopping, {kept}")
        message(f"ray actor {j} died ({reason}); Ray restarted it (restart {self.restarts[j]} of at most "
                f"{self.cfg.max_restarts}); {what}")

    def failed(self, j: int, err: Exception, logger, what: str) -> None:
        """A request to actor j failed because the actor died: count it; the caller asks again.

        One death can fail several requests: the one in flight ("the actor was restarted"), then
        those asked while Ray restarts it ("the actor is restarting"), all ``ActorUnavailableError``;
        they count once, until the actor answers. ``ActorDiedError`` always counts: Ray raises it
        when it will not restart the actor, so asking again fails until the count stops the run."""
        if isinstance(err, self.ray.exceptions.ActorUnavailableError) and self.counted[j]:
            time.sleep(0.05)  # still restarting
            return
        self.counted[j] = True
        reason = type(err).__name__
        if isinstance(err, self.ray.exceptions.ActorDiedError):  # its message ends with the cause when the
            lines = [ln.strip() for ln in str(err).splitlines() if "Error" in ln]  # actor's start-up raised
            reason += f": {lines[-1][:200]}" if lines else ""
        self.died(j, reason, logger, f"its {what} was discarded and it was asked again")

    def check_restarted(self, j: int, result: dict, logger) -> None:
        """An actor that died between two requests shows up only as a restarted actor."""
        if result.get("restarted"):
            if not self.counted[j]:
                self.died(j, "found restarted", logger, "its envs started new episodes")
            self.counted[j] = False

    def call_all(self, method: str, args: list, logger) -> list:
        """``actor.method(*args[j])`` on every actor; an actor that dies is asked again once restarted."""
        ray = self.ray
        self.launch()
        futures = {j: getattr(a, method).remote(*args[j]) for j, a in enumerate(self.actors)}
        results: dict = {}
        while futures:
            for j in list(futures):
                try:
                    results[j] = ray.get(futures.pop(j))
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    self.failed(j, e, logger, "rollout" if method == "collect" else f"'{method}' call")
                    futures[j] = getattr(self.actors[j], method).remote(*args[j])
                    continue
                except ray.exceptions.RayTaskError as e:
                    raise ContrlError(f"ray actor {j} failed in '{method}': {e.cause!r}") from None
                if isinstance(results[j], dict):
                    self.check_restarted(j, results[j], logger)
        return [results[j] for j in range(self.W)]

    def received(self, j: int, res: dict, agent: Agent) -> list:
        """Merge what actor j's observations add to the statistics; its episodes as (t, env, return,
        length), numbered among all the run's envs."""
        if res["seen"] is not None:
            seen = res["seen"]
            agent.obs_norm.rms.merge(np.asarray(seen["mean"]), np.asarray(seen["var"]), seen["count"])
        return [(t, j * self.k + env_i, ret, length) for t, env_i, ret, length in res["episodes"]]

    def summary(self) -> dict:
        return {"ray_actors": self.W, "ray_actor_restarts": list(self.restarts)}

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


class RayEnvs(_RayEnvs):
    """Synchronous pattern: one ``[T, workers * n_envs]`` rollout from all the actors."""

    def collect(self, agent: Agent, rollout: Rollout, gen: torch.Generator, scaler, on_step, logger) -> torch.Tensor:
        weights = self.ray.put(to_flat(model_tensors(agent.model)))
        stats = agent.obs_norm.rms.state_dict() if agent.obs_norm is not None else None
        results = self.call_all("collect", [(weights, stats)] * self.W, logger)
        last_values = torch.zeros(self.n)
        episodes: list = []
        for j, res in enumerate(results):
            cols = slice(j * self.k, (j + 1) * self.k)
            for name, value in res["rollout"].items():
                if name == "obs_last":
                    rollout.obs_last[cols] = value
                else:
                    getattr(rollout, name)[:, cols] = value
            last_values[cols] = res["last_values"]
            episodes.extend(self.received(j, res, agent))
        if scaler is not None:  # as the synchronous runner scales them: step by step, all envs
            dones = rollout.dones.numpy().astype(bool)
            for t in range(rollout.T):
                rollout.rewards[t] = torch.from_numpy(scaler(rollout.rewards[t].numpy().astype(np.float64), dones[t]))
        report_episodes(episodes, on_step)
        return last_values

    def iterate(self, agent, rule, rollout, gen, scaler, on_step, logger) -> tuple[dict, int]:
        last_values = self.collect(agent, rollout, gen, scaler, on_step, logger)
        return update_from(rule, rollout, last_values, gen), rollout.T * self.n

    def state(self, logger) -> dict:
        states = self.call_all("get_state", [()] * self.W, logger)
        return {"envs": json.dumps([s["envs"] for s in states]),
                "rnn_state": torch.cat([s["rnn_state"] for s in states]),
                "actor_generators": torch.stack([s["generator"] for s in states])}

    def load_state(self, ts: dict) -> None:
        envs = json.loads(ts["envs"])
        # copies with their own storage: views of the loaded tensors crashed the actors (ray 2.60)
        rnn = [r.clone() for r in ts["rnn_state"].split(self.k)]
        gens = [g.clone() for g in ts["actor_generators"]]
        # (logger None: an actor's death before the log opens goes to the start-up lines)
        self.call_all("set_state", [({"envs": envs[j], "rnn_state": rnn[j], "generator": gens[j]},)
                                    for j in range(self.W)], None)

    def summary(self) -> dict:
        return {"env_seeds": [s for j in range(self.W) for s in actor_seeds(self.cfg, j)], **super().summary()}


class RayGradientEnvs(_RayEnvs):
    """Asynchronous pattern (a3c, acer with ray_pattern=async): every actor always has one
    gradient request in flight; the learner applies them one by one as they arrive."""

    actor_cls = GradientActor

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        super().__init__(cfg, log, run_dir)
        self.replay_info = None
        p = cfg.algo_config()
        if cfg.rule == "acer" and p.replay_ratio > 0:
            act_shape = () if isinstance(self.action_space, gym.spaces.Discrete) else tuple(self.action_space.shape)
            held, nbytes = ReplayBuffer.size(p.buffer_size, p.n_steps, self.k, self.obs_dim, act_shape,
                                             behaviour_dim(self.action_space), self._state_size())
            self.replay_info = {"per_worker_transitions": held, "capacity_transitions": held * self.W,
                                "bytes": nbytes * self.W}
            log(f"replay buffer: {held:,} transitions per actor, {self.W * nbytes / 2**20:.1f} MiB preallocated in all")

    def _state_size(self) -> int:
        return build_model(self.cfg, self.observation_space, self.action_space).state_size

    def seeds_for(self, j: int) -> list[int]:  # fresh seeds per launch, like the Hogwild runner's workers
        seeds = list(range(self.next_seed, self.next_seed + self.k))
        self.next_seed += self.k
        return seeds

    def start(self, model) -> None:
        super().start(model)
        self.pending: dict = {}  # future -> actor index

    def _ask(self, j: int, agent: Agent) -> None:
        stats = agent.obs_norm.rms.state_dict() if agent.obs_norm is not None else None
        self.pending[self.actors[j].gradients.remote(self.weights, stats)] = j

    def _put_weights(self, agent: Agent, rule) -> None:
        avg = getattr(rule, "avg", None)  # ACER's average policy network, for the trust region
        self.weights = self.ray.put({"model": to_flat(model_tensors(agent.model)),
                                     "avg": to_flat(model_tensors(avg)) if avg is not None else None})

    def iterate(self, agent, rule, rollout, gen, scaler, on_step, logger) -> tuple[dict, int]:
        ray = self.ray
        if not self.pending:
            self.launch()
            self._put_weights(agent, rule)
            for j in range(self.W):
                self._ask(j, agent)
        while True:
            [done], _ = ray.wait(list(self.pending), num_returns=1)
            j = self.pending.pop(done)
            try:
                res = ray.get(done)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self.failed(j, e, logger, "gradient")
                self._ask(j, agent)
            except ray.exceptions.RayTaskError as e:
                raise ContrlError(f"ray actor {j} failed: {e.cause!r}") from None
        self.check_restarted(j, res, logger)
        grads = torch.from_numpy(res["grads"].copy()).split([q.numel() for q in rule.params])
        for q, g in zip(rule.params, grads):
            q.grad = g.view_as(q)
        rule.step()
        report_episodes(self.received(j, res, agent), on_step)
        self._put_weights(agent, rule)
        self._ask(j, agent)
        return res["stats"], res["steps"]

    def summary(self) -> dict:
        out = super().summary()
        if self.replay_info is not None:
            out["replay_buffer"] = self.replay_info
        return out

    def state(self, logger) -> dict:  # the workers start on fresh seeds after a resume (see the module doc)
        return {"next_seed": torch.tensor(self.next_seed + self.k * self.W)}

    def load_state(self, ts: dict) -> None:
        self.next_seed = int(ts["next_seed"])


class RaySyncRunner(SyncRunner):
    """--runner ray, synchronous pattern (ppo, a2c, acer)."""

    def make_envs(self, log):
        return RayEnvs(self.cfg, log, self.run_dir)


class RayAsyncRunner(SyncRunner):
    """--runner ray, asynchronous pattern (a3c; acer with ray_pattern=async)."""

    def make_envs(self, log):
        return RayGradientEnvs(self.cfg, log, self.run_dir)


def ray_runner(cfg: Config):
    return RayAsyncRunner if cfg.ray_async else RaySyncRunner


