"""The Ray runner's envs backends (``--runner ray``): the same algorithms with their envs on Ray
actors, each an ``EnvActor`` holding a ``Worker`` (its ``n_envs`` envs, copies of the model and
the rule). Ray is imported only when a run asks for this runner; without ``ray_address`` a local
Ray starts and stops with the run (one already running in the process is used and left
running), ``--ray-address auto|HOST:PORT`` joins a cluster.

* ``RayEnvs`` (ppo, a2c, acer): ``LocalEnvs`` whose ``[T, workers * n_envs]`` rollout is the
  actors' rollouts side by side, collected with the weights put once in the object store. Actor
  j steps the env seeds the synchronous runner gives envs ``j * n_envs ...``; it returns the
  observations it has seen, merged by the learner in actor order; rewards are scaled on the
  learner. With ``ray_segments`` K > 1 a request brings K rollouts per actor, all collected with
  its weights, and the learner updates on each in turn (policy lag up to K - 1 updates).
  Checkpoints hold every actor's envs, recurrent state and generator: resume is exact.
* ``RayGradientEnvs`` (a3c; acer with ``ray_pattern=async``): every actor always has one request
  in flight and answers with its rule's next K gradients (ACER: a new segment's or a replayed
  one's) computed with that request's weights; the learner steps each as it arrives and sends
  that actor the new weights. As with Hogwild, resume restarts the actors on fresh seeds.

Actors have ``max_restarts``: a dead actor's request is discarded and asked again of the
restarted actor, and the log says so; past ``max_restarts`` the run stops, keeping its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from contrl.algos.rule import model_tensors
from contrl.config import Config, config_from_dict
from contrl.envs.make import env_spaces
from contrl.envs.normalize import SeenObsNormalizer
from contrl.errors import ContrlError, Fault
from contrl.record.logger import StatsWindow
from contrl.runners.collect import Worker, episode_rows
from contrl.runners.local import LocalEnvs
from contrl.runners.loop import Envs, Restarts
from contrl.threads import set_threads

STEP_FIELDS = ("obs", "actions", "logp", "values", "rewards", "dones", "trunc_values", "states",
               "mu", "final_obs", "terminated")  # [T, n, ...]
ENV_FIELDS = ("last_values", "obs_last")  # [n, ...]


def import_ray():
    try:
        import ray
    except ImportError:
        raise ContrlError('--runner ray needs Ray: pip install "contrl[ray]" (or use --runner sync)') from None
    return ray


# Ray on Linux binds and advertises the address its host reaches the outside through, also for a
# local Ray that only this machine uses; with this variable at 0 (what Ray does on macOS and
# Windows) every Ray process binds and advertises the loopback address instead.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray_environment() -> dict:
    """The variables of this process's environment that Ray reads or sets."""
    return {k: v for k, v in os.environ.items() if k.startswith("RAY_") or k == "PYTHONBREAKPOINT"}


def loopback_only() -> Callable[[], None]:
    """A local Ray started after this (by this process or a child) binds 127.0.0.1 only. Returns
    what undoes it, and what that Ray's ``ray.init`` set in the environment (Ray 2.60 sets
    ``RAY_AUTH_MODE=token`` for a new local Ray, after which a ``ray.init(address=...)`` of this
    process to a cluster without token authentication sees every actor it creates cancelled):
    a later run of this process joins a cluster as a fresh process would."""
    from ray._private import ray_constants  # Ray reads the variable once, at import: set both

    before, constant = _ray_environment(), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def undo() -> None:
        for k in set(_ray_environment()) - set(before):
            del os.environ[k]
        os.environ.update(before)
        ray_constants.ENABLE_RAY_CLUSTER = constant
        try:  # Ray's C++ settings of this process, read from the environment again (as Ray does on setting it)
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except (ImportError, AttributeError):  # a Ray without it: nothing cached there
            pass

    return undo


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


def task_fault(j: int, e: Exception, step: Optional[int] = None, n: int = 0) -> Exception:
    """What actor j raised: its Fault (an env's exception, a non-finite value), with the step
    when the caller knows it, or a Fault naming the error, its remote traceback as details."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, Fault):
        if step is not None:
            cause.step = step + (getattr(cause, "t", 0) + 1) * n
        return cause
    return Fault(f"ray actor {j} failed: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:200]}", str(e))


def _in_segment(i: int, T: int, fn: Callable):
    """``fn()``, the t of a Fault it raises counted from the first of a request's segments (its
    ``i``-th, of ``T`` steps each)."""
    try:
        return fn()
    except Fault as e:
        if hasattr(e, "t"):
            e.t += i * T
        raise


# -- the actor (a plain class; ray.remote wraps it when a run starts) ----------------------------
class EnvActor:
    def __init__(self, cfg_json: str, seeds: list[int], torch_seed: int, threads: int, gradients: bool, first: int,
                 reward_stats: Optional[dict] = None):
        """``gradients``: the asynchronous pattern's actor (a replay memory of its own, rewards
        scaled here); else the synchronous pattern's, which returns rollouts."""
        import ray

        set_threads(threads)
        cfg = config_from_dict(json.loads(cfg_json))
        # a restarted actor says so in its next result (it may have died between two requests)
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if self.restarted:  # do not replay the episodes of the first incarnation
            shift = int(np.random.SeedSequence().entropy % 1_000_000_000)
            seeds, torch_seed = [s + shift for s in seeds], torch_seed + shift
        norm = (lambda dim: SeenObsNormalizer(dim, cfg.clip_obs)) if cfg.norm_obs else None
        self.w = Worker(cfg, seeds, torch_seed, norm, gradients=gradients, first=first, reward_stats=reward_stats)
        context = ray.get_runtime_context()
        self.node = {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address()}  # where it runs

    def _begin(self, weights: np.ndarray, tensors: list, obs_stats) -> None:
        from_flat(weights, tensors)
        if self.w.agent.obs_norm is not None:
            self.w.agent.obs_norm.begin(obs_stats)

    def _answer(self, episodes: list, **out) -> dict:
        norm, scaler = self.w.agent.obs_norm, self.w.scaler
        restarted, self.restarted = self.restarted, False
        return {**out, "episodes": episodes, "seen": norm.seen.state_dict() if norm is not None else None,
                "restarted": restarted, "reward_stats": scaler.rms.state_dict() if scaler is not None else None,
                "node": self.node}

    def rollout(self, weights: np.ndarray, obs_stats, segments: int = 1) -> dict:
        """Synchronous pattern: ``segments`` ``[T, n_envs]`` rollouts in a row with these weights,
        each as numpy arrays (Ray ships those without pickling), with its episodes."""
        self._begin(weights, model_tensors(self.w.agent.model), obs_stats)
        r, rollouts, episodes = self.w.rollout, [], []
        names = [name for name in STEP_FIELDS + ENV_FIELDS if getattr(r, name) is not None
                 and (name != "states" or self.w.agent.model.recurrent)]
        for i in range(segments):
            episodes.append(_in_segment(i, r.T, self.w.collect))
            rollouts.append(({name: getattr(r, name).numpy().copy() for name in names}, r.nonfinite))
        return self._answer(episodes, rollouts=rollouts)

    def gradients(self, weights: np.ndarray, obs_stats, segments: int = 1) -> dict:
        """Asynchronous pattern: the gradients of the rule's next ``segments`` updates, all with
        these weights (``[segments, params]``), each with its statistics, env steps and episodes."""
        self._begin(weights, self.w.rule.weights(), obs_stats)
        grads, stats, steps, episodes = [], [], [], []
        for i in range(segments):
            s, n, e = _in_segment(i, self.w.rollout.T, self.w.gradients)
            grads.append(to_flat(self.w.grads()))
            stats.append(s)
            steps.append(n)
            episodes.append(e)
        return self._answer(episodes, grads=np.stack(grads), stats=stats, steps=steps)

    def get_state(self) -> dict:
        w = self.w
        return {"envs": w.venv.get_state(), "rnn_state": w.rnn_state.clone(), "generator": w.gen.get_state()}

    def set_state(self, state: dict) -> None:
        self.w.venv.set_state(state["envs"])
        self.w.rnn_state.copy_(state["rnn_state"])
        self.w.gen.set_state(state["generator"])


# -- the learner's side ----------------------------------------------------------------------
class RayActors:
    """The ``workers`` actors of a run: starts or joins Ray, creates the actors, calls them and
    counts their deaths."""

    restart_wait = 300.0  # seconds a dead actor may take to come back (Ray finding a node for it)

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path, gradients: bool):
        self.ray = ray = import_ray()
        self.cfg, self.gradients = cfg, gradients
        self.observation_space, self.action_space = env_spaces(cfg.env, cfg.env_kwargs)  # before any actor starts
        self.W, self.k = cfg.workers, cfg.n_envs
        self.restarts = Restarts(self.W, cfg.max_restarts, log)
        self.counted = [False] * self.W  # a death already counted, whose restarted actor has not answered yet
        self.died_at = [0.0] * self.W  # when (time.monotonic) that death was counted
        self.run_id = uuid.uuid4().hex[:8]  # actor names: contrl-RUNID-J (ray list actors shows them)
        self.handles: list = []
        self.reward_stats: list = [None] * self.W  # the asynchronous pattern: each actor's reward scaler
        self.undo_loopback: Optional[Callable[[], None]] = None  # this run's local Ray is on 127.0.0.1
        self.log = log
        self.nodes: list = [None] * self.W  # the node each actor answered from last: {"node_id", "ip"}
        need, self.owns_ray = self.W * cfg.ray_cpus, not ray.is_initialized()
        if self.owns_ray:
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            try:
                if cfg.ray_address:
                    ray.init(address=cfg.ray_address, **kwargs)
                else:
                    # address "local": a new Ray for this run, never one an earlier `ray start` left
                    # behind; on the loopback interface only (nothing outside this machine needs it)
                    self.undo_loopback = loopback_only()
                    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **kwargs)
            except Exception as e:  # noqa: BLE001 - Ray raises several kinds; all mean "not reachable"
                self.owns_ray = False
                self._undo_loopback()
                what = (f"cannot join the Ray cluster at '{cfg.ray_address}'" if cfg.ray_address
                        else "cannot start a local Ray")
                fix = ("start one with `ray start --head` or drop --ray-address to run a local Ray (a cluster with "
                       "token authentication also needs RAY_AUTH_MODE=token here)" if cfg.ray_address
                       else "`ray stop` ends Ray processes an earlier session left; then run again")
                raise ContrlError(f"{what} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); {fix}") from None
        have = ray.cluster_resources().get("CPU", 0.0)
        where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "Ray"
        if need > have:
            self.close()
            raise ContrlError(f"{where} has {have:g} CPUs and the run asks for {self.W} actors x ray_cpus "
                              f"{cfg.ray_cpus:g} = {need:g}; lower --workers or ray_cpus, or add nodes")
        log(f"ray {ray.__version__}: {self.W} actors x {self.k} env(s), {cfg.ray_cpus:g} CPU(s) each, on "
            f"{'a local Ray' if self.owns_ray and not cfg.ray_address else where} ({have:g} CPUs)")

    def launch(self, seeds_for: Callable[[int], list]) -> None:
        """Create the actors, once; actor j steps the envs seeded ``seeds_for(j)``."""
        if self.handles:
            return
        remote, cfg = self.ray.remote(EnvActor), self.cfg
        for j in range(self.W):
            seeds = seeds_for(j)
            options = dict(name=f"contrl-{self.run_id}-{j}", num_cpus=cfg.ray_cpus, max_restarts=cfg.max_restarts,
                           max_task_retries=0, scheduling_strategy="SPREAD")  # across a cluster's nodes
            self.handles.append(remote.options(**options).remote(cfg.to_json(), seeds, seeds[0] + 7919,
                                                                  max(1, int(cfg.ray_cpus)), self.gradients, j * self.k,
                                                                  self.reward_stats[j]))

    def failed(self, j: int, err: Exception, what: str) -> None:
        """A request to actor j failed because the actor died: count it; the caller asks again.

        One death can fail several requests: the one in flight ("the actor was restarted"), then
        those asked while Ray restarts it ("the actor is restarting"), all ``ActorUnavailableError``;
        they count once, until the actor answers. ``ActorDiedError`` always counts: Ray raises it
        when it will not restart the actor, so asking again fails until the count stops the run."""
        if isinstance(err, self.ray.exceptions.ActorUnavailableError) and self.counted[j]:
            waited = time.monotonic() - self.died_at[j]
            if waited > self.restart_wait:  # Ray keeps it "restarting" while no node can take it
                cpus = f"{self.cfg.ray_cpus:g} CPU{'s' if self.cfg.ray_cpus != 1 else ''}"
                raise Fault(f"ray actor {j} has not come back {waited:.0f} s after it died: no node of the cluster has "
                            f"{cpus} free to restart it on (a node lost?); add nodes or lower --workers, then --resume")
            time.sleep(0.05)  # still restarting
            return
        self.counted[j] = True
        self.died_at[j] = time.monotonic()
        reason = type(err).__name__
        if isinstance(err, self.ray.exceptions.ActorDiedError):  # its message ends with the cause when the
            lines = [ln.strip() for ln in str(err).splitlines() if "Error" in ln]  # actor's start-up raised
            reason += f": {lines[-1][:200]}" if lines else ""
        self.restarts.died(j, f"ray actor {j}", reason, f"Ray restarts it; its {what} in flight is discarded and "
                                                        f"asked again")

    def answered(self, j: int, result: dict, agent) -> None:
        """An answer of actor j: a death between two requests shows only as a restarted actor;
        the observations it has seen go into the learner's statistics."""
        if result["restarted"]:
            if not self.counted[j]:
                self.restarts.died(j, f"ray actor {j}", "found restarted", "its envs started new episodes")
            self.counted[j] = False
        node, was = result["node"], self.nodes[j]
        if node != was:
            self.nodes[j] = node
            where = f"node {node['node_id'][:12]} ({node['ip']})"
            if was is None:
                self.log(f"ray actor {j} runs on {where}")
            else:
                lost = not any(n["NodeID"] == was["node_id"] and n["Alive"] for n in self.ray.nodes())
                self.log(f"ray actor {j} moved to {where} from node {was['node_id'][:12]} ({was['ip']})"
                         + (", which Ray reports lost" if lost else ""))
        if result["reward_stats"] is not None:
            self.reward_stats[j] = result["reward_stats"]
        if result["seen"] is not None:
            seen = result["seen"]
            agent.obs_norm.rms.merge(np.asarray(seen["mean"]), np.asarray(seen["var"]), seen["count"])

    def call_all(self, method: str, args: list) -> list:
        """``actor.method(*args[j])`` on every actor; one that dies is asked again once restarted."""
        ray = self.ray
        futures = {j: getattr(a, method).remote(*args[j]) for j, a in enumerate(self.handles)}
        results: dict = {}
        while futures:
            for j in list(futures):
                try:
                    results[j] = ray.get(futures.pop(j))
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    self.failed(j, e, "rollout" if method == "rollout" else f"'{method}' call")
                    futures[j] = getattr(self.handles[j], method).remote(*args[j])
                except ray.exceptions.RayTaskError as e:
                    raise task_fault(j, e) from None
        return [results[j] for j in range(self.W)]

    def close(self) -> None:
        for a in self.handles:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.handles = []
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False
        self._undo_loopback()

    def _undo_loopback(self) -> None:
        if self.undo_loopback is not None:
            self.undo_loopback()
            self.undo_loopback = None


class OnRay(Envs):
    """What both patterns share: the actors, the spaces, the summary and closing."""

    gradients = False

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        self.cfg = cfg
        self.actors = a = RayActors(cfg, log, run_dir, self.gradients)
        self.observation_space, self.action_space = a.observation_space, a.action_space
        self.k, self.W = a.k, a.W
        self.n = self.n_per_update = a.k * (1 if self.gradients else a.W)  # envs per update
        self.steps_per_iteration = cfg.algo_config().n_steps * self.n * cfg.ray_segments  # one answer's

    def summary(self) -> dict:
        return {"ray_actors": self.W, "ray_actor_restarts": list(self.actors.restarts.counts),
                "ray_actor_nodes": list(self.actors.nodes)}

    def close(self) -> None:
        self.actors.close()


class RayEnvs(OnRay, LocalEnvs):
    """Synchronous pattern: ``LocalEnvs`` whose rollout is the actors' rollouts side by side."""

    def _seeds(self, j: int) -> list[int]:
        """Those the synchronous runner gives envs j*n_envs ... ."""
        return [self.cfg.seed + j * self.k + i for i in range(self.k)]

    def iterate(self, step: int) -> tuple[dict, int, int]:
        """One request to every actor: ``ray_segments`` rollouts each, collected with the weights
        of now; the rule updates on each in turn (with its learning rate at that update's step)."""
        self.actors.launch(self._seeds)
        agent, seg, cfg = self.agent, self.rollout.T * self.n, self.cfg
        segments = min(cfg.ray_segments, max(1, -(-(cfg.steps - step) // seg)))  # none past the budget
        weights = self.actors.ray.put(to_flat(model_tensors(agent.model)))
        stats = agent.obs_norm.rms.state_dict() if agent.obs_norm is not None else None
        try:
            results = self.actors.call_all("rollout", [(weights, stats, segments)] * self.W)
        except Fault as e:  # the step it happened at: the actor knows the segment and its t
            e.step = step + (getattr(e, "t", -1) + 1) * self.n
            raise
        for j, res in enumerate(results):
            self.actors.answered(j, res, agent)
        window = StatsWindow()
        for i in range(segments):
            if i:
                self.rule.set_progress(min((step + i * seg) / cfg.steps, 1.0))
            episodes = self._fill([res["rollouts"][i] for res in results], [res["episodes"][i] for res in results])
            self.episodes(episode_rows(episodes, step + i * seg, self.n))
            window.add(self.rule.update(self.rollout, self.gen), seg)
        return window.means(), segments * seg, segments

    def _fill(self, rollouts: list, episodes: list) -> list:
        """The actors' rollouts of one segment side by side in ``self.rollout``; rewards scaled as
        ``LocalEnvs`` scales them (step by step, all envs). Returns the segment's episodes."""
        rollout, out = self.rollout, []
        rollout.nonfinite = ""
        for j, (fields, nonfinite) in enumerate(rollouts):
            rollout.nonfinite = rollout.nonfinite or nonfinite  # (nan_policy skip_update)
            cols = slice(j * self.k, (j + 1) * self.k)
            for name, value in fields.items():
                if name in ENV_FIELDS:
                    getattr(rollout, name).numpy()[cols] = value
                else:
                    getattr(rollout, name).numpy()[:, cols] = value
            out += [(t, j * self.k + env, ret, length) for t, env, ret, length in episodes[j]]
        if self.scaler is not None:
            dones = rollout.dones.numpy().astype(bool)
            for t in range(rollout.T):
                scaled = self.scaler(rollout.rewards[t].numpy().astype(np.float64), dones[t])
                if rollout.mu is None:  # replay (ACER) keeps them raw and scales them when it learns
                    rollout.rewards[t] = torch.from_numpy(scaled)
        return sorted(out, key=lambda e: e[0])

    def state(self) -> dict:
        states = self.actors.call_all("get_state", [()] * self.W)
        scaler = json.dumps(self.scaler.state_dict()) if self.scaler is not None else ""
        return {"envs": json.dumps([s["envs"] for s in states]), "reward_scaler": scaler,
                "rnn_state": torch.cat([s["rnn_state"] for s in states]),
                "actor_generators": torch.stack([s["generator"] for s in states])}

    def load_state(self, ts: dict) -> None:
        self.actors.launch(self._seeds)
        envs = json.loads(ts["envs"])
        # copies with their own storage: views of the loaded tensors crashed the actors (ray 2.60)
        rnn = [r.clone() for r in ts["rnn_state"].split(self.k)]
        gens = [g.clone() for g in ts["actor_generators"]]
        self.actors.call_all("set_state", [({"envs": envs[j], "rnn_state": rnn[j], "generator": gens[j]},)
                                           for j in range(self.W)])
        if self.scaler is not None:
            self.scaler.load_state_dict(json.loads(ts["reward_scaler"]))

    def summary(self) -> dict:
        return {"env_seeds": [s for j in range(self.W) for s in self._seeds(j)], **super().summary()}


class RayGradientEnvs(OnRay):
    """Asynchronous pattern: one iteration = one actor's gradient, applied as it arrives."""

    gradients, timed_rows = True, True  # rows about every second, as Hogwild's (answers come as they come)
    resumes = ("the model, the rule's state, the observation statistics and each actor's reward scaler; the "
               "actors start on fresh seeds (with empty replay memories)")

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        super().__init__(cfg, log, run_dir)
        self.worker_memories = self.W
        self.next_seed = cfg.seed
        self.pending: dict = {}  # request -> actor index

    def _seeds(self, j: int) -> list[int]:  # fresh seeds per launch, like the Hogwild runner's workers
        self.next_seed += self.k
        return list(range(self.next_seed - self.k, self.next_seed))

    def _ask(self, j: int) -> None:
        stats = self.agent.obs_norm.rms.state_dict() if self.agent.obs_norm is not None else None
        self.pending[self.actors.handles[j].gradients.remote(self.weights, stats, self.cfg.ray_segments)] = j

    def iterate(self, step: int) -> tuple[dict, int, int]:
        """One actor's answer: its ``ray_segments`` gradients, each stepped as the rule steps it."""
        ray, rule, cfg = self.actors.ray, self.rule, self.cfg
        if not self.pending:
            self.actors.launch(self._seeds)
            self.weights = ray.put(to_flat(rule.weights()))
            for j in range(self.W):
                self._ask(j)
        while True:
            [done], _ = ray.wait(list(self.pending), num_returns=1)
            j = self.pending.pop(done)
            try:
                res = ray.get(done)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self.actors.failed(j, e, "gradient")
                self._ask(j)
            except ray.exceptions.RayTaskError as e:
                raise task_fault(j, e, step, self.k) from None
        self.actors.answered(j, res, self.agent)
        window, at = StatsWindow(), step
        for i, (flat, stats, steps) in enumerate(zip(res["grads"], res["stats"], res["steps"])):
            if i:
                rule.set_progress(min(at / cfg.steps, 1.0))
            if not stats.get("skipped_updates"):  # (nan_policy skip_update: a non-finite one is dropped)
                grads = torch.from_numpy(flat.copy()).split([q.numel() for q in rule.params])
                for q, g in zip(rule.params, grads):
                    q.grad = g.view_as(q)
                rule.step()
            self.episodes(episode_rows(res["episodes"][i], at, self.k, j * self.k))
            window.add(stats, steps)
            at += steps
        self.weights = ray.put(to_flat(rule.weights()))
        self._ask(j)
        return window.means(), at - step, len(res["steps"])

    def state(self) -> dict:  # the actors start on fresh seeds after a resume (see the module doc)
        return {"next_seed": torch.tensor(self.next_seed + self.k * self.W),
                "reward_stats": json.dumps(self.actors.reward_stats)}

    def load_state(self, ts: dict) -> None:
        self.next_seed = int(ts["next_seed"])
        if "reward_stats" in ts:
            self.actors.reward_stats = json.loads(ts["reward_stats"])
