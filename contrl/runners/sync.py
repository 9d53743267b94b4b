"""The synchronous runner: one learner, N envs in lock-step, on-policy update rules (PPO, A2C).

Data flow of one iteration: for T steps, normalise the N observations, act with one batched
forward (inference mode, sampling from the run's generator), step the vector env, store into the
``[T, N]`` rollout (bootstrapping V(final obs) on time-limit truncation); then GAE, the update
rule's gradient steps, logging, periodic evaluation and checkpoints.

Checkpoints are taken between iterations and hold everything the next iteration depends on
(parameters, optimiser, generator, normalisation statistics, step counters, each env's
replayable state and the recurrent state of a recurrent network), so a resumed run continues
exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from contrl.agent import Agent, build_model
from contrl.algos.a2c import A2C
from contrl.algos.acer import ACER
from contrl.algos.ppo import PPO
from contrl.config import Config
from contrl.envs.normalize import ObsNormalizer, RewardScaler
from contrl.envs.vec import make_vec
from contrl.errors import ContrlError
from contrl.record.checkpoint import load_checkpoint, save_checkpoint
from contrl.record.compute import ComputeMeter
from contrl.record.logger import Logger, StatsWindow
from contrl.runners.collect import collect
from contrl.storage.replay import behaviour_dim
from contrl.storage.rollout import Rollout

RULES = {"ppo": PPO, "a2c": A2C, "acer": ACER}


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step:,}; checkpoint saved. Resume with: contrl train --resume {run_dir}")
        self.run_dir, self.step = run_dir, step


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


def update_from(rule, rollout: Rollout, last_values: torch.Tensor, generator: torch.Generator) -> dict:
    """The rule's update on a collected rollout: GAE first for the on-policy rules (PPO, A2C); ACER
    (``stores_behaviour``) computes its own Retrace targets. Both runners call this."""
    if getattr(rule, "stores_behaviour", False):
        return rule.update(rollout, generator)
    p = rule.cfg
    rollout.finish(last_values, p.gamma, p.gae_lambda)
    stats = rule.update(rollout, generator)
    stats["explained_variance"] = explained_variance(rollout.values.flatten(), rollout.returns.flatten())
    return stats


class Runner:
    """What every runner shares: its settings and the Ctrl-C protocol (the first Ctrl-C asks for a
    clean stop after the current update, the second stops at once)."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, quiet: bool = False,
                 tensorboard: bool = True, eval_hook: Optional[Callable[[int, float], None]] = None):
        """``eval_hook(step, mean return)`` is called after every periodic evaluation; an exception
        it raises (``contrl tune``: a pruned trial) stops the run like any error."""
        self.cfg, self.run_dir, self.resume, self.quiet = cfg, Path(run_dir), resume, quiet
        self.tensorboard = tensorboard
        self.eval_hook = eval_hook
        self._stop = False

    def _on_sigint(self, signum, frame):
        if self._stop:  # second Ctrl-C: stop now, keep the last saved checkpoint
            raise KeyboardInterrupt
        self._stop = True

    def _evaluate(self, agent: Agent, step: int, row: dict, logger: Logger, best: float) -> float:
        """Periodic evaluation into the progress row; best.pt when it improves. Returns the best."""
        ev = agent.evaluate(self.cfg.eval_episodes, seed=self.cfg.seed + 10_000)
        row["eval_return"], row["eval_return_std"] = ev["mean"], ev["std"]
        logger.message(f"eval @ {step:,}: {ev['mean']:.2f} +- {ev['std']:.2f} ({ev['episodes']} episodes)")
        if ev["mean"] > best:
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt", agent.payload())
            best = ev["mean"]
        if self.eval_hook is not None:
            self.eval_hook(step, ev["mean"])
        return best


class LocalEnvs:
    """The synchronous runner's envs: one vector env of ``n_envs`` in this process (or in env
    subprocesses), stepped by the learner's own model. The Ray runner's ``RayEnvs`` has the same
    methods, with the envs on Ray actors."""

    def __init__(self, cfg: Config, log: Callable[[str], None]):
        self.cfg = cfg
        self.venv = make_vec(cfg.env, cfg.env_kwargs, cfg.n_envs, cfg.seed, cfg.vec, log=log)
        self.observation_space, self.action_space = self.venv.observation_space, self.venv.action_space
        self.obs_dim, self.n = self.venv.obs_dim, self.venv.n
        self.n_per_update = self.n  # envs whose steps make one update
        self.learner_replay = True  # ACER's replay memory is the learner's
        self.rnn_state: Optional[torch.Tensor] = None

    def start(self, model) -> None:
        self.recurrent = model.recurrent
        self.rnn_state = model.initial_state(self.n)  # recurrent state carried across rollouts

    def iterate(self, agent: Agent, rule, rollout: Rollout, gen: torch.Generator, scaler, on_step,
                logger) -> tuple[dict, int]:
        """One iteration: collect a rollout, run the update rule on it; returns (stats, env steps)."""
        last_values = collect(agent, self.venv, rollout, gen, scaler,
                              lambda t, res: on_step(t, res.episodes), self.rnn_state)
        return update_from(rule, rollout, last_values, gen), rollout.T * self.n

    def state(self, logger) -> dict:
        """What a checkpoint needs to continue these envs exactly."""
        return {"envs": json.dumps(self.venv.get_state()), "rnn_state": self.rnn_state.clone()}

    def load_state(self, ts: dict) -> None:
        self.venv.set_state(json.loads(ts["envs"]))
        if self.recurrent:
            self.rnn_state.copy_(ts["rnn_state"])

    def summary(self) -> dict:
        return {"env_seeds": [self.cfg.seed + i for i in range(self.n)]}

    def close(self) -> None:
        self.venv.close()


class SyncRunner(Runner):
    def make_envs(self, log: Callable[[str], None]):
        return LocalEnvs(self.cfg, log)

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> tuple[Agent, dict]:
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        algo_cfg = cfg.algo_config()
        T = algo_cfg.n_steps
        ckpt_dir = self.run_dir / "checkpoints"

        log_lines: list[str] = []
        envs = self.make_envs(log_lines.append)
        N = envs.n
        per_iter = T * envs.n_per_update  # env steps per update
        eval_every = cfg.eval_every or max(per_iter, cfg.steps // 10)
        log_every = cfg.log_every or per_iter * -(-1000 // per_iter)  # a row every >= 1,000 steps
        ckpt_every = cfg.checkpoint_every or eval_every
        try:
            model = build_model(cfg, envs.observation_space, envs.action_space)
            obs_norm = ObsNormalizer(envs.obs_dim, cfg.clip_obs) if cfg.norm_obs else None
            agent = Agent(cfg, model, envs.observation_space, envs.action_space, obs_norm)
            gen = torch.Generator().manual_seed(cfg.seed)
            scaler = RewardScaler(N, algo_cfg.gamma) if cfg.norm_reward else None
            act_shape = () if agent.discrete else tuple(envs.action_space.shape)
            mu_dim = 0
            if getattr(RULES[cfg.rule], "stores_behaviour", False):  # ACER: replay needs mu
                mu_dim = behaviour_dim(envs.action_space)
                rule = ACER(model, algo_cfg, N, envs.obs_dim, act_shape, mu_dim, replay=envs.learner_replay)
                if rule.replay is not None:
                    log_lines.append(f"replay buffer: {rule.replay.capacity:,} transitions "
                                     f"({rule.replay.segments:,} segments of {T}x{N}), "
                                     f"{rule.buffer_bytes / 2**20:.1f} MiB preallocated")
            else:
                rule = RULES[cfg.rule](model, algo_cfg)
            rollout = Rollout(T, N, envs.obs_dim, act_shape, model.state_size, cfg.seq_len, mu_dim)
            envs.start(model)

            step, iteration, best, prev_cost = 0, 0, -float("inf"), {}
            recent: deque = deque(maxlen=100)
            recent_len: deque = deque(maxlen=100)
            if self.resume:
                st = load_checkpoint(ckpt_dir / "latest.pt")
                ts = st.get("train_state")
                if ts is None:
                    raise ContrlError(f"{ckpt_dir / 'latest.pt'} holds no training state; it cannot be resumed")
                model.load_state_dict(st["model"])
                rule.load_state_dict(ts["rule"])
                gen.set_state(ts["generator"])
                if obs_norm is not None:
                    obs_norm.rms.load_state_dict(json.loads(st["obs_norm"]))
                if scaler is not None:
                    scaler.load_state_dict(json.loads(ts["reward_scaler"]))
                meta = json.loads(ts["meta"])
                step, iteration, best = meta["step"], meta["iteration"], meta["best_eval"]
                prev_cost = meta  # wall_s, cpu_s, peak_mem_mb so far
                recent.extend(meta["recent_returns"])
                recent_len.extend(meta["recent_lengths"])
                envs.load_state(ts)
                if step >= cfg.steps:
                    raise ContrlError(f"run already has {step:,} of {cfg.steps:,} steps; give more with --steps N")

            logger = Logger(self.run_dir, cfg.steps, self.tensorboard, self.quiet,
                            resume_step=step if self.resume else None)
            for line in log_lines:
                logger.message(line)

            def save_latest() -> None:
                payload = agent.payload()
                payload["train_state"] = {
                    "rule": rule.state_dict(),
                    "generator": gen.get_state(),
                    "reward_scaler": json.dumps(scaler.state_dict()) if scaler is not None else "",
                    **envs.state(logger),
                    "meta": json.dumps({
                        "step": step, "iteration": iteration, "best_eval": best, **meter.state(),
                        "recent_returns": list(recent), "recent_lengths": list(recent_len),
                    }),
                }
                save_checkpoint(ckpt_dir / "latest.pt", payload)

            def on_step(t, episodes) -> None:  # during collect, step is the count before this rollout
                if episodes:
                    recent.extend(r for _, r, _ in episodes)
                    recent_len.extend(n for _, _, n in episodes)
                    logger.episodes(step + (t + 1) * N, meter.wall(), episodes)

            main_thread = threading.current_thread() is threading.main_thread()
            old_handler = signal.signal(signal.SIGINT, self._on_sigint) if main_thread else None
            meter = ComputeMeter(prev_cost, cfg.power_watts)
            try:
                window = StatsWindow()
                while step < cfg.steps:
                    lr = rule.set_progress(step / cfg.steps)
                    stats, done = envs.iterate(agent, rule, rollout, gen, scaler, on_step, logger)
                    step += done
                    iteration += 1
                    window.add(stats, done)
                    crossed = lambda every: step // every > (step - done) // every  # noqa: E731
                    if not (crossed(log_every) or crossed(eval_every) or crossed(ckpt_every)
                            or step >= cfg.steps or self._stop):
                        continue
                    sps = window.steps_per_s()
                    row = {"step": step, "wall_s": meter.wall(), **meter.row(),
                           "episode_return": float(np.mean(recent)) if recent else None,
                           "episode_length": float(np.mean(recent_len)) if recent_len else None,
                           "episodes": len(recent), "lr": lr, "steps_per_s": sps, **window.means()}
                    window.reset()
                    if crossed(eval_every) or step >= cfg.steps:
                        best = self._evaluate(agent, step, row, logger, best)
                    logger.progress(row)
                    logger.status(step, sps, row["episode_return"], force=step >= cfg.steps, cost=row)
                    if crossed(ckpt_every) or step >= cfg.steps or self._stop:
                        save_latest()
                    if self._stop:
                        raise Interrupted(self.run_dir, step)
            finally:
                if old_handler is not None:
                    signal.signal(signal.SIGINT, old_handler)
                logger.close()
            cost = meter.summary()
        finally:
            envs.close()
        model.eval()
        summary = {"run_dir": str(self.run_dir), "algo": cfg.algo, "env": cfg.env, "env_kwargs": cfg.env_kwargs,
                   "seed": cfg.seed, **envs.summary(), "steps": step,
                   **cost, "steps_per_s": step / max(cost["wall_s"], 1e-9), "best_eval": best}
        if getattr(rule, "replay", None) is not None:
            summary["replay_buffer"] = {"capacity_transitions": rule.replay.capacity,
                                        "stored_transitions": rule.replay.transitions,
                                        "bytes": rule.buffer_bytes}
        if cfg.final_eval_episodes > 0:
            ev = agent.evaluate(cfg.final_eval_episodes, seed=cfg.seed + 20_000)
            summary["final_eval"] = {k: ev[k] for k in ("mean", "std", "episodes", "deterministic", "seed")}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return agent, summary

