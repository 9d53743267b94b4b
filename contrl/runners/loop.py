"""The training loop every runner shares (``Trainer``), and the interface of its envs backends.

A run is one loop: ask the envs backend for an iteration (experience and the updates made with
it), add its steps, and at the cadences write a progress row and the status line, evaluate
(``best.pt``) and save ``latest.pt``; at the end (the step budget, Ctrl-C or SIGTERM) save a
consistent last checkpoint, evaluate the final agent and write the summary. How experience is
gathered and where updates happen is the backend's (``Envs``): ``local.LocalEnvs``,
``hogwild.HogwildEnvs``, ``ray_runner.RayEnvs`` and ``ray_runner.RayGradientEnvs``.
A checkpoint holds everything the next iteration depends on (parameters, the rule's state, the
run's generator, normalisation statistics, step counters and the backend's ``state()``), so a
synchronous run resumes exactly.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from contrl.agent import Agent, build_model
from contrl.algos import make_rule
from contrl.config import Config
from contrl.envs.normalize import ObsNormalizer
from contrl.errors import ContrlError, Fault, Interrupted, NonFinite, checkpoint_kept
from contrl.record.checkpoint import load_checkpoint, save_checkpoint
from contrl.record.compute import ComputeMeter
from contrl.record.logger import Logger, StatsWindow
from contrl.threads import set_threads

NOTHING = ({}, 0, 0)  # an iteration without statistics, steps or updates


class Envs:
    """An envs backend. It sets ``observation_space`` and ``action_space`` (of one env),
    ``n_per_update`` (the envs one update reads: the rule's ``n_envs``), ``steps_per_iteration``
    (what the default cadences count in), ``worker_memories`` (replay memories its workers keep;
    0: the learner's rule keeps it), ``timed_rows`` (a progress row about every second) and
    ``resumes`` (what ``--resume`` restores)."""

    worker_memories, timed_rows = 0, False
    resumes = ("exactly: parameters, the rule's state, the generator, normalisation statistics, each env "
               "(replayed) and the recurrent state")

    def start(self, agent: Agent, rule, generator: torch.Generator, episodes: Callable[[list], None]) -> None:
        """Before the first iteration and before a resumed state is loaded: the learner's agent,
        rule and generator, and where episodes go (step, env, return, length)."""
        self.agent, self.rule, self.gen, self.episodes = agent, rule, generator, episodes

    def iterate(self, step: int) -> tuple[dict, int, int]:
        """One iteration at global step ``step``: (mean update statistics, env steps, updates)."""
        raise NotImplementedError

    def stop(self) -> tuple[dict, int, int]:
        """Before the last checkpoint: stop the workers; what they did meanwhile."""
        return NOTHING

    def snapshot(self, agent: Agent) -> Agent:
        """The agent as it is now, to evaluate and save."""
        return agent

    def state(self) -> dict:  # what a checkpoint needs to continue these envs
        return {}

    def load_state(self, ts: dict) -> None:
        pass

    def summary(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class HookRaised(Exception):
    """What the eval_hook raised, carried out of the loop untouched."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class Restarts:
    """Deaths of a backend's workers (processes, Ray actors), counted per worker: each is logged;
    past ``max_restarts`` for one worker the run stops (a :class:`Fault`)."""

    def __init__(self, n: int, max_restarts: int, log: Callable[[str], None]):
        self.counts, self.max, self.log = [0] * n, max_restarts, log

    def died(self, i: int, name: str, reason: str, then: str, details: str = "", step: Optional[int] = None) -> None:
        self.counts[i] += 1
        n = self.counts[i]
        if n > self.max:
            e = Fault(f"{name} failed {n} time{'s' if n > 1 else ''} (last: {reason})", details)
            e.step = step
            raise e
        self.log(f"{name} died ({reason}); {then} (restart {self.counts[i]} of at most {self.max})")


def make_envs(cfg: Config, log: Callable[[str], None], run_dir: Path) -> Envs:
    """The envs backend of ``cfg.runner`` (Ray is imported only for the Ray runner)."""
    if cfg.runner == "ray":
        from contrl.runners.ray_runner import RayEnvs, RayGradientEnvs

        return (RayGradientEnvs if cfg.ray_async else RayEnvs)(cfg, log, run_dir)
    if cfg.runner == "async":
        from contrl.runners.hogwild import HogwildEnvs

        return HogwildEnvs(cfg, log, run_dir)
    from contrl.runners.local import LocalEnvs

    return LocalEnvs(cfg, log, run_dir)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, quiet: bool = False,
                 tensorboard: bool = True, eval_hook: Optional[Callable[[int, float], None]] = None):
        """``eval_hook(step, mean return)`` is called after every periodic evaluation; an exception
        it raises (``contrl tune``: a pruned trial) stops the run like any error."""
        self.cfg, self.run_dir, self.resume, self.quiet = cfg, Path(run_dir), resume, quiet
        self.tensorboard, self.eval_hook = tensorboard, eval_hook
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.logger: Optional[Logger] = None
        self.lines: list[str] = []  # messages before the log opens
        self.resumed: Optional[dict] = None
        self._stop = 0  # the signal that asked for a clean stop

    def message(self, text: str) -> None:
        if self.logger is None:
            self.lines.append(text)
        else:
            self.logger.message(text)

    def run(self) -> tuple[Agent, dict]:
        cfg = self.cfg
        set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.step, self.envs = 0, None
        try:
            envs = self.envs = make_envs(cfg, self.message, self.run_dir)
            model = build_model(cfg, envs.observation_space, envs.action_space)
            obs_dim = int(np.prod(envs.observation_space.shape))
            obs_norm = ObsNormalizer(obs_dim, cfg.clip_obs) if cfg.norm_obs else None
            self.agent = Agent(cfg, model, envs.observation_space, envs.action_space, obs_norm)
            self.gen = torch.Generator().manual_seed(cfg.seed)
            self.rule = make_rule(cfg, model, envs.n_per_update, memory=not envs.worker_memories)
            self.memory = self._memory()
            envs.start(self.agent, self.rule, self.gen, self._episodes)
            self.iteration, self.best, self.skipped, prev_cost = 0, -float("inf"), 0, {}
            self.recent: deque = deque(maxlen=100)
            self.recent_len: deque = deque(maxlen=100)
            if self.resume:
                prev_cost = self._load()
            self.logger = Logger(self.run_dir, cfg.steps, self.tensorboard, self.quiet,
                                 resume_step=self.step if self.resume else None)
            for line in self.lines:
                self.logger.message(line)
            self.meter = ComputeMeter(prev_cost, cfg.power_watts)
            self._train()
        except HookRaised as e:  # the eval_hook stopped the run (contrl tune: a pruned trial)
            raise e.error from None
        except Exception as e:  # noqa: BLE001 - every fault ends as one line; its details in messages.log
            raise self._fault(e) from None
        finally:
            if self.envs is not None:
                self.envs.close()  # workers gone: their CPU time is in the children's
            if self.logger is not None:
                self.logger.close()
        try:
            return self._finish()
        except Exception as e:  # noqa: BLE001 - the final evaluation's env, the summary's disk
            raise self._fault(e) from None

    def _fault(self, e: Exception) -> Exception:
        """What a run that stops on ``e`` says: input errors (ContrlError, Interrupted) as they are;
        everything else as one line with where the last good checkpoint is, the traceback in
        messages.log."""
        if isinstance(e, Interrupted) or (isinstance(e, ContrlError) and not isinstance(e, Fault)):
            return e
        details = getattr(e, "details", "") or traceback.format_exc()
        if isinstance(e, Fault):
            msg = str(e)
        elif isinstance(e, OSError):
            msg = f"cannot write {e.filename or self.run_dir}: {e.strerror or e} (free some space or fix the permissions)"
        elif type(e).__module__.startswith("ray."):  # one the Ray runner does not name itself
            msg = (f"Ray failed: {type(e).__name__} ({(str(e).splitlines() or [''])[0][:200]}); check the cluster "
                   f"(`ray status`) and Ray's logs (/tmp/ray/session_latest/logs), then run again")
        else:
            msg = f"unexpected {type(e).__name__} ({(str(e).splitlines() or [''])[0][:200]}): an error of contrl itself"
        step = getattr(e, "step", None)
        where = f" at step {step:,}" if step is not None else f" after step {self.step:,}"
        log = self.run_dir / "messages.log"
        try:
            if self.logger is not None:
                self.logger.detail(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {msg}{where}\n{details}")
            else:
                with open(log, "a") as f:
                    f.write(f"stopped: {msg}{where}\n{details}\n")
        except OSError:  # the disk may be what failed
            pass
        cls = type(e) if isinstance(e, Fault) else Fault  # (EnvError, NonFinite stay what they are)
        return cls(f"{where.strip()}: {msg} (details: {log}); {checkpoint_kept(self.run_dir)}", details)

    # -- the loop --------------------------------------------------------------------------------
    def _train(self) -> None:
        cfg, envs, logger = self.cfg, self.envs, self.logger
        per_iter = envs.steps_per_iteration
        eval_every = cfg.eval_every or max(per_iter, cfg.steps // 10)
        log_every = cfg.log_every or (0 if envs.timed_rows else per_iter * -(-1000 // per_iter))  # >= 1,000 steps
        ckpt_every = cfg.checkpoint_every or eval_every
        main_thread = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
        old = {s: signal.signal(s, self._on_signal) for s in signals}
        try:
            window, last_row = StatsWindow(), time.monotonic()
            while True:
                lr = self.rule.set_progress(min(self.step / cfg.steps, 1.0))
                before = self.step
                self._add(window, *envs.iterate(self.step))
                self.iteration += 1
                last = self.step >= cfg.steps or bool(self._stop)
                if last:
                    self._add(window, *envs.stop())
                crossed = lambda every: every > 0 and self.step // every > before // every  # noqa: E731
                timed = not log_every and window.n > 0 and time.monotonic() - last_row >= 1.0
                if not (last or timed or crossed(log_every) or crossed(eval_every) or crossed(ckpt_every)):
                    continue
                last_row = time.monotonic()
                row = {"step": self.step, "wall_s": self.meter.wall(), **self.meter.row(),
                       "episode_return": float(np.mean(self.recent)) if self.recent else None,
                       "episode_length": float(np.mean(self.recent_len)) if self.recent_len else None,
                       "episodes": len(self.recent), "lr": lr, "steps_per_s": window.steps_per_s(), **window.means(),
                       "skipped_updates": self.skipped}
                window.reset()
                if crossed(eval_every) or self.step >= cfg.steps:
                    self._evaluate(row)
                logger.progress(row)
                logger.status(self.step, row["steps_per_s"], row["episode_return"], force=last, cost=row)
                if crossed(ckpt_every) or last:
                    self._save_latest()
                if self._stop:
                    raise Interrupted(self.run_dir, self.step, self._stop)
                if last:
                    return
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _add(self, window: StatsWindow, stats: dict, steps: int, updates: int) -> None:
        self.step += steps
        self.skipped += round(stats.get("skipped_updates", 0.0) * updates)
        window.add(stats, steps, updates)

    def _on_signal(self, signum, frame) -> None:
        """The first Ctrl-C (or SIGTERM) asks for a clean stop after the current iteration; a
        second one stops at once, keeping the last saved checkpoint."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop = signum

    def _episodes(self, rows: list) -> None:
        """Episodes (step, env, return, length) from the envs backend."""
        self.recent.extend(r[2] for r in rows)
        self.recent_len.extend(r[3] for r in rows)
        self.logger.episodes_at(rows, self.meter.wall())

    def _evaluate(self, row: dict) -> None:
        """Periodic evaluation into the progress row; best.pt when it improves."""
        agent = self.envs.snapshot(self.agent)
        try:
            ev = agent.evaluate(self.cfg.eval_episodes, seed=self.cfg.seed + 10_000,
                                deterministic=self.cfg.eval_deterministic)
        except Fault as e:
            e.args = (f"{e} (the periodic evaluation)",)
            e.step = self.step
            raise
        row["eval_return"], row["eval_return_std"] = ev["mean"], ev["std"]
        self.logger.message(f"eval @ {self.step:,}: {ev['mean']:.2f} +- {ev['std']:.2f} ({ev['episodes']} episodes)")
        if ev["mean"] > self.best:
            save_checkpoint(self.ckpt_dir / "best.pt", self._payload(agent))
            self.best = ev["mean"]
        if self.eval_hook is not None:
            try:
                self.eval_hook(self.step, ev["mean"])
            except Exception as e:  # noqa: BLE001 - the caller's own exception, passed on as it is
                raise HookRaised(e) from None

    # -- checkpoints -----------------------------------------------------------------------------
    def _payload(self, agent: Agent) -> dict:
        """The agent's checkpoint payload, refused if it is not finite (never over a good one)."""
        rms = agent.obs_norm.rms if agent.obs_norm is not None else None
        if not all(bool(torch.isfinite(t).all()) for t in agent.model.state_dict().values()) or (
                rms is not None and not (np.isfinite(rms.mean).all() and np.isfinite(rms.var).all())):
            raise NonFinite("the model's parameters or observation statistics are not finite; nothing was saved "
                            "over the last good checkpoint")
        return agent.payload()

    def _save_latest(self) -> None:
        payload = self._payload(self.envs.snapshot(self.agent))
        payload["train_state"] = {
            "rule": self.rule.state_dict(),
            "generator": self.gen.get_state(),
            **self.envs.state(),
            "meta": json.dumps({"step": self.step, "iteration": self.iteration, "best_eval": self.best,
                                "skipped_updates": self.skipped,
                                **self.meter.state(), "recent_returns": list(self.recent),
                                "recent_lengths": list(self.recent_len)}),
        }
        save_checkpoint(self.ckpt_dir / "latest.pt", payload)

    def _load(self) -> dict:
        """Continue from latest.pt; returns its metadata (the compute counters so far)."""
        path = self.ckpt_dir / "latest.pt"
        st = load_checkpoint(path)
        ts = st.get("train_state")
        if ts is None or "rule" not in ts:
            raise ContrlError(f"{path} holds no training state; it cannot be resumed")
        self.agent.model.load_state_dict(st["model"])  # into shared tensors too (Hogwild)
        self.rule.load_state_dict(ts["rule"])
        if "generator" in ts:
            self.gen.set_state(ts["generator"])
        if self.agent.obs_norm is not None:
            self.agent.obs_norm.rms.load_state_dict(json.loads(st["obs_norm"]))
        meta = json.loads(ts["meta"])
        self.step, self.iteration, self.best = meta["step"], meta.get("iteration", 0), meta["best_eval"]
        self.skipped = meta.get("skipped_updates", 0)
        self.recent.extend(meta["recent_returns"])
        self.recent_len.extend(meta["recent_lengths"])
        self.envs.load_state(ts)
        if self.step >= self.cfg.steps:
            raise ContrlError(f"run already has {self.step:,} of {self.cfg.steps:,} steps; give more with --steps N")
        self.resumed = {"step": self.step, "restored": self.envs.resumes}
        self.message(f"resumed at step {self.step:,}: {self.envs.resumes}")
        return meta

    # -- the end ---------------------------------------------------------------------------------
    def _memory(self) -> Optional[dict]:
        """The run's replay memory, logged; for the summary (None: the rule keeps none)."""
        m, W = self.rule.memory, self.envs.worker_memories
        if m is not None:
            self.message(f"replay buffer: {m.capacity:,} transitions ({m.segments:,} segments of {m.k}x{m.n_envs}), "
                         f"{m.nbytes / 2**20:.1f} MiB preallocated")
            return {"capacity_transitions": m.capacity, "bytes": m.nbytes}
        held, nbytes = (W and self.rule.memory_size()) or (0, 0)
        if held:
            self.message(f"replay buffer: {held:,} transitions per worker, {W * nbytes / 2**20:.1f} MiB "
                         f"preallocated in all")
            return {"per_worker_transitions": held, "capacity_transitions": held * W, "bytes": nbytes * W}
        return None

    def _finish(self) -> tuple[Agent, dict]:
        cfg = self.cfg
        cost = self.meter.summary()
        agent = self.envs.snapshot(self.agent)
        agent.model.eval()
        summary = {"run_dir": str(self.run_dir), "algo": cfg.algo, "env": cfg.env, "env_kwargs": cfg.env_kwargs,
                   "seed": cfg.seed, **self.envs.summary(), "steps": self.step, **cost,
                   "steps_per_s": self.step / max(cost["wall_s"], 1e-9), "best_eval": self.best,
                   "skipped_updates": self.skipped, **({"resumed": self.resumed} if self.resumed else {})}
        if self.memory is not None:
            summary["replay_buffer"] = self.memory
            if self.rule.memory is not None:
                summary["replay_buffer"]["stored_transitions"] = self.rule.memory.transitions
        if cfg.final_eval_episodes > 0:
            ev = agent.evaluate(cfg.final_eval_episodes, seed=cfg.seed + 20_000, deterministic=cfg.eval_deterministic)
            summary["final_eval"] = {k: ev[k] for k in ("mean", "std", "episodes", "deterministic", "seed")}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return agent, summary
