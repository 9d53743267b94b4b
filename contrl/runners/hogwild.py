"""The asynchronous runner (A3C, Mnih et al. 2016): Hogwild workers on a shared-memory model.

The process you start is the coordinator and the evaluator (the chapter's test process). It
puts the global model's parameters and the optimiser's statistics in shared memory and starts
``workers`` processes. Each worker owns ``n_envs`` envs and a local copy of the model; in a loop
it copies the global weights into its local model, collects an ``n_steps`` segment with the same
acting loop as the synchronous runner, computes the update rule's gradients on it and applies
them to the global parameters through the shared optimiser (no lock). A shared per-worker step
counter makes the step budget global.

Meanwhile the coordinator drains the workers' pipes (episodes, update statistics, errors),
writes the logs, evaluates snapshots of the global model (``best.pt``), saves ``latest.pt``, and
restarts a worker that died (from the current global weights, with fresh seeds, at most
``max_restarts`` times per worker). On the budget, Ctrl-C or an error it stops the workers and
waits for them, so no process outlives the run.

Hogwild training is not reproducible step for step; resume restores the global model, the
shared optimiser statistics, the observation statistics, the step count and the logs, and
starts the workers on fresh seeds.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
import torch.multiprocessing as mp
from multiprocessing import connection as mp_connection

from contrl.agent import Agent, build_model
from contrl.algos.a2c import A2C
from contrl.algos.acer import ACER
from contrl.config import config_from_dict
from contrl.envs.make import make_env
from contrl.envs.normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from contrl.envs.vec import VecEnv
from contrl.errors import ContrlError
from contrl.record.checkpoint import load_checkpoint, save_checkpoint
from contrl.record.compute import ComputeMeter
from contrl.record.logger import Logger, StatsWindow
from contrl.runners.collect import collect
from contrl.runners.sync import Interrupted, Runner, update_from
from contrl.storage.replay import ReplayBuffer, behaviour_dim
from contrl.storage.rollout import Rollout

RULES = {"a2c": A2C}
SEND_EVERY_S = 0.5  # how often a worker reports its statistics and episodes


# -- observation statistics shared by all workers ---------------------------------------------
# A float64 tensor [workers + 1, 2 * D + 1] in shared memory: row 0 holds the statistics the run
# started from (initial or resumed), row i + 1 everything worker i has seen (mean, var, count).
# Each row has one writer, so no lock is needed (a worker killed mid-write cannot block the
# others); the statistics in force are the merge of all rows.
def _rms_to_array(rms: RunningMeanStd, out: np.ndarray) -> None:
    d = rms.mean.shape[0]
    out[:d], out[d:2 * d], out[2 * d] = rms.mean, rms.var, rms.count


def _rms_from_array(arr: np.ndarray) -> RunningMeanStd:
    d = (arr.shape[0] - 1) // 2
    rms = RunningMeanStd((d,))
    rms.mean, rms.var, rms.count = arr[:d].copy(), arr[d:2 * d].copy(), float(arr[2 * d])
    return rms


def merged_obs_stats(table: np.ndarray) -> RunningMeanStd:
    rms = _rms_from_array(table[0])
    for row in table[1:]:
        part = _rms_from_array(row)
        rms.merge(part.mean, part.var, part.count)
    return rms


class WorkerObsNormalizer(ObsNormalizer):
    """A worker's view of the shared observation statistics.

    Between two syncs it normalises with (all statistics at the last sync + what it has seen
    since); ``sync()`` publishes what it has seen in its own row and takes the merge of all rows,
    once per segment, so all workers and the evaluator share one normaliser.
    """

    def __init__(self, table: torch.Tensor, row: int, dim: int, clip: float):
        super().__init__(dim, clip)
        self.table, self.row = table.numpy(), row
        self.mine = _rms_from_array(self.table[row])  # a restarted worker continues its row
        self.sync()

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if update:
            self.mine.update(obs)
        return super().__call__(obs, update)

    def sync(self) -> None:
        _rms_to_array(self.mine, self.table[self.row])
        self.rms = merged_obs_stats(self.table)


# -- the worker process -------------------------------------------------------------------------
def _worker(idx: int, launch: dict, cfg_json: str, global_model, opt_state: dict, counters: torch.Tensor,
            base_step: int, stop, conn, obs_table, threads: int, parent_pid: int, avg_model=None) -> None:
    # Ctrl-C reaches the whole process group; the coordinator handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    try:
        cfg = config_from_dict(json.loads(cfg_json))
        rule_cfg = cfg.algo_config()
        venv = VecEnv(cfg.env, cfg.env_kwargs, launch["env_seeds"])
        model = build_model(cfg, venv.observation_space, venv.action_space)
        local, shared = list(model.parameters()), list(global_model.parameters())
        obs_norm = (WorkerObsNormalizer(obs_table, idx + 1, venv.obs_dim, cfg.clip_obs)
                    if obs_table is not None else None)
        agent = Agent(cfg, model, venv.observation_space, venv.action_space, obs_norm)
        gen = torch.Generator().manual_seed(launch["torch_seed"])
        n = venv.n
        scaler = RewardScaler(n, rule_cfg.gamma) if cfg.norm_reward else None
        act_shape = () if agent.discrete else tuple(venv.action_space.shape)
        mu_dim = 0
        if cfg.rule == "acer":  # each worker has its own replay memory, as in the paper
            mu_dim = behaviour_dim(venv.action_space)
            rule = ACER(model, rule_cfg, n, venv.obs_dim, act_shape, mu_dim, apply_to=shared,
                        shared_state=opt_state, avg=avg_model)
        else:
            rule = RULES[cfg.rule](model, rule_cfg, apply_to=shared, shared_state=opt_state)
        rollout = Rollout(rule_cfg.n_steps, n, venv.obs_dim, act_shape, model.state_size, cfg.seq_len, mu_dim)
        rnn_state = model.initial_state(n)  # carried across segments (truncated BPTT at their ends)
        seg = rule_cfg.n_steps * n
        episodes: list = []
        window = StatsWindow()
        global_step = base_step
        conn.send(("ready",))

        def on_step(t, res):
            for env_i, ret, length in res.episodes:
                episodes.append((global_step + (t + 1) * n, idx * n + env_i, ret, length))

        def send():
            conn.send(("stats", window.sums, window.n, window.steps, list(episodes)))
            episodes.clear()
            window.reset()

        last_send = time.monotonic()
        while not stop.is_set() and os.getppid() == parent_pid:
            global_step = base_step + int(counters[:, 0].sum())
            if global_step >= cfg.steps:
                break
            with torch.no_grad():
                torch._foreach_copy_(local, shared)
            if obs_norm is not None:
                obs_norm.sync()
            rule.set_progress(global_step / cfg.steps)
            last_values = collect(agent, venv, rollout, gen, scaler, on_step, rnn_state)
            stats = update_from(rule, rollout, last_values, gen)
            counters[idx, 0] += seg
            counters[idx, 1] += 1 + stats.get("replay_updates", 0)
            window.add(stats, seg)
            if time.monotonic() - last_send > SEND_EVERY_S:
                send()
                last_send = time.monotonic()
        if obs_norm is not None:
            obs_norm.sync()
        send()
        venv.close()
    except Exception as e:  # noqa: BLE001 - reported to the coordinator, which restarts the worker
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        finally:
            os._exit(1)


# -- the coordinator ----------------------------------------------------------------------------
class AsyncRunner(Runner):
    def run(self) -> tuple[Agent, dict]:
        cfg = self.cfg
        rule_cfg = cfg.algo_config()
        W = cfg.workers
        threads = max(1, min(cfg.threads, (os.cpu_count() or 1) // W))
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        probe = make_env(cfg.env, cfg.env_kwargs)
        obs_space, act_space = probe.observation_space, probe.action_space
        probe.close()
        obs_dim = int(np.prod(obs_space.shape))

        model = build_model(cfg, obs_space, act_space).share_memory()
        act_shape = () if isinstance(act_space, gym.spaces.Discrete) else tuple(act_space.shape)
        if cfg.rule == "acer":  # the coordinator holds no replay memory: each worker has its own
            rule = ACER(model, rule_cfg, cfg.n_envs, obs_dim, act_shape, behaviour_dim(act_space), replay=False)
            if rule.avg is not None:
                rule.avg.share_memory()  # the average policy network is shared, like the model
        else:
            rule = RULES[cfg.rule](model, rule_cfg)
        rule.optimizer.share_memory()
        obs_norm = ObsNormalizer(obs_dim, cfg.clip_obs) if cfg.norm_obs else None
        obs_table = torch.zeros(W + 1, 2 * obs_dim + 1, dtype=torch.float64).share_memory_() if cfg.norm_obs else None
        eval_model = build_model(cfg, obs_space, act_space)
        agent = Agent(cfg, eval_model, obs_space, act_space, obs_norm)
        counters = torch.zeros(W, 2, dtype=torch.int64).share_memory_()  # per worker: steps, updates

        base, best, prev_cost, next_seed = 0, -float("inf"), {}, cfg.seed
        recent: deque = deque(maxlen=100)
        recent_len: deque = deque(maxlen=100)
        ckpt_dir = self.run_dir / "checkpoints"
        if self.resume:
            st = load_checkpoint(ckpt_dir / "latest.pt")
            ts = st.get("train_state")
            if ts is None or "rule" not in ts:
                raise ContrlError(f"{ckpt_dir / 'latest.pt'} holds no training state; it cannot be resumed")
            model.load_state_dict(st["model"])  # copies into the shared tensors
            rule.load_state_dict(ts["rule"])
            if obs_norm is not None:
                obs_norm.rms.load_state_dict(json.loads(st["obs_norm"]))
            meta = json.loads(ts["meta"])
            base, best = meta["step"], meta["best_eval"]
            prev_cost = meta  # wall_s, cpu_s, peak_mem_mb so far
            next_seed = meta.get("next_seed", cfg.seed + 1000)
            recent.extend(meta["recent_returns"])
            recent_len.extend(meta["recent_lengths"])
            if base >= cfg.steps:
                raise ContrlError(f"run already has {base:,} of {cfg.steps:,} steps; give more with --steps N")
        if obs_norm is not None:
            _rms_to_array(obs_norm.rms, obs_table.numpy()[0])  # rows 1..W: nothing seen yet (count 0)

        per_round = rule_cfg.n_steps * cfg.n_envs * W
        eval_every = cfg.eval_every or max(per_round, cfg.steps // 10)
        ckpt_every = cfg.checkpoint_every or eval_every
        log_every = cfg.log_every or 0  # 0: a row about every second, once the workers have reported
        logger = Logger(self.run_dir, cfg.steps, self.tensorboard, self.quiet,
                        resume_step=base if self.resume else None)
        logger.message(f"{cfg.algo}: {W} workers x {cfg.n_envs} env(s), {threads} torch thread(s) each")
        replay_info = None
        if cfg.rule == "acer" and rule_cfg.replay_ratio > 0:
            held, nbytes = ReplayBuffer.size(rule_cfg.buffer_size, rule_cfg.n_steps, cfg.n_envs, obs_dim, act_shape,
                                             behaviour_dim(act_space), model.state_size)
            replay_info = {"per_worker_transitions": held, "capacity_transitions": held * W,
                           "bytes": nbytes * W}
            logger.message(f"replay buffer: {held:,} transitions per worker, {W * nbytes / 2**20:.1f} MiB "
                           f"preallocated in all")

        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        procs: list = [None] * W
        conns: list = [None] * W  # one pipe per worker: a worker killed mid-message spoils only its own
        restarts = [0] * W
        launches: list[dict] = []
        errors: dict[int, str] = {}
        ready = [False] * W
        window = StatsWindow()
        cfg_json = cfg.to_json()
        step = base
        meter = ComputeMeter(prev_cost, cfg.power_watts)
        wall = meter.wall

        def launch(i: int) -> None:
            nonlocal next_seed
            seeds = list(range(next_seed, next_seed + cfg.n_envs))
            next_seed += cfg.n_envs
            info = {"worker": i, "env_seeds": seeds, "torch_seed": seeds[0], "step": step}
            receiver, sender = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, daemon=True, args=(
                i, info, cfg_json, model, rule.optimizer.state, counters, base, stop, sender,
                obs_table, threads, os.getpid(), getattr(rule, "avg", None)))
            # children start with SIGINT blocked, so a Ctrl-C during their start-up cannot hit them
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                p.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            sender.close()
            if conns[i] is not None:
                conns[i].close()
            procs[i], conns[i], ready[i] = p, receiver, False
            launches.append({**info, "pid": p.pid})
            logger.message(f"worker {i} started (pid {p.pid}, env seeds {seeds})")

        def handle(i: int, msg: tuple) -> None:
            if msg[0] == "error":
                errors[i] = msg[1]
            elif msg[0] == "ready":
                ready[i] = True
            else:
                _, sums, count, steps, eps = msg
                if count:
                    window.add({k: v / count for k, v in sums.items()}, steps, count)
                if eps:
                    recent.extend(e[2] for e in eps)
                    recent_len.extend(e[3] for e in eps)
                    logger.episodes_at(eps, wall())

        def read(i: int) -> None:
            """Handle what worker i has sent; close its pipe once the worker has gone."""
            c = conns[i]
            try:
                while c.poll():
                    handle(i, c.recv())
            except (EOFError, OSError, pickle.UnpicklingError):
                c.close()
                conns[i] = None

        def drain(timeout: float) -> None:
            """Handle every message waiting (waiting up to ``timeout`` for the first)."""
            live = {c: i for i, c in enumerate(conns) if c is not None}
            if not live:
                time.sleep(timeout)
            for c in mp_connection.wait(list(live), timeout) if live else []:
                read(live[c])

        def snapshot() -> None:
            eval_model.load_state_dict(model.state_dict())
            if obs_norm is not None:
                obs_norm.rms = merged_obs_stats(obs_table.numpy())

        def save_latest() -> None:
            snapshot()
            payload = agent.payload()
            payload["train_state"] = {
                "rule": rule.state_dict(),
                "meta": json.dumps({
                    "step": step, "best_eval": best, **meter.state(),
                    "next_seed": next_seed, "recent_returns": list(recent), "recent_lengths": list(recent_len),
                }),
            }
            save_checkpoint(ckpt_dir / "latest.pt", payload)

        def evaluate(row: dict) -> None:
            nonlocal best
            snapshot()
            best = self._evaluate(agent, step, row, logger, best)

        def progress_row(lr: float) -> dict:
            row = {"step": step, "wall_s": wall(), **meter.row(),
                   "episode_return": float(np.mean(recent)) if recent else None,
                   "episode_length": float(np.mean(recent_len)) if recent_len else None,
                   "episodes": len(recent), "lr": lr, "steps_per_s": window.steps_per_s(), **window.means()}
            window.reset()
            return row

        def check_workers() -> None:
            for i, p in enumerate(procs):
                if p.exitcode is None or stop.is_set():
                    continue
                if p.exitcode == 0 and base + int(counters[:, 0].sum()) >= cfg.steps:
                    continue  # it saw the budget reached before this process did
                if conns[i] is not None:
                    read(i)  # its last words (the error it reported) may still be in the pipe
                error = errors.pop(i, None)
                reason = error or (f"killed by signal {-p.exitcode}" if p.exitcode < 0
                                                 else f"exit code {p.exitcode}")
                if not ready[i] and error is None and p.exitcode > 0:
                    reason += (" during start-up; if you call contrl.train from a script, put the call under "
                               "`if __name__ == '__main__':` (workers start by importing the script)")
                restarts[i] += 1
                if restarts[i] > cfg.max_restarts:
                    kept = (f"the last checkpoint is kept in {ckpt_dir}; fix the cause and resume with "
                            f"contrl train --resume {self.run_dir}") if (ckpt_dir / "latest.pt").exists() \
                        else "no checkpoint was saved yet"
                    raise ContrlError(f"worker {i} failed {restarts[i]} times (last: {reason}); stopping, {kept}")
                logger.message(f"worker {i} died ({reason}); restarting it from the current global weights "
                               f"(restart {restarts[i]} of at most {cfg.max_restarts})")
                launch(i)

        def stop_workers() -> None:
            stop.set()
            deadline = time.time() + 15
            while any(p is not None and p.is_alive() for p in procs) and time.time() < deadline:
                drain(0.05)  # keep the pipes flowing so workers can flush and exit
            for p in procs:
                if p is not None and p.is_alive():
                    p.kill()
                if p is not None:
                    p.join()
            drain(0.0)

        main_thread = threading.current_thread() is threading.main_thread()
        old_handler = signal.signal(signal.SIGINT, self._on_sigint) if main_thread else None
        marks = {"log": step // max(log_every, 1), "eval": step // eval_every, "ckpt": step // ckpt_every}
        last_row = time.time()

        def crossed(name: str, every: int) -> bool:
            if step // every > marks[name]:
                marks[name] = step // every
                return True
            return False

        lr = rule.set_progress(step / cfg.steps)
        try:
            for i in range(W):
                launch(i)
            while True:
                drain(0.1)
                step = base + int(counters[:, 0].sum())
                lr = rule.set_progress(min(step / cfg.steps, 1.0))
                if step >= cfg.steps or self._stop:
                    break
                check_workers()
                do_eval = crossed("eval", eval_every)
                do_log = crossed("log", log_every) if log_every else (window.n > 0 and time.time() - last_row >= 1.0)
                if do_eval or do_log:
                    last_row = time.time()
                    row = progress_row(lr)
                    if do_eval:
                        evaluate(row)
                    logger.progress(row)
                    logger.status(step, row["steps_per_s"], row["episode_return"], cost=row)
                if crossed("ckpt", ckpt_every):
                    save_latest()
            stop_workers()
            step = base + int(counters[:, 0].sum())
            row = progress_row(lr)
            if not self._stop:
                evaluate(row)
            logger.progress(row)
            logger.status(step, row["steps_per_s"], row["episode_return"], force=True, cost=row)
            save_latest()
            if self._stop:
                raise Interrupted(self.run_dir, step)
        finally:
            stop_workers()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            logger.close()
        cost = meter.summary()  # the workers have exited: their CPU time is in the children's
        snapshot()
        eval_model.eval()
        summary = {"run_dir": str(self.run_dir), "algo": cfg.algo, "env": cfg.env, "env_kwargs": cfg.env_kwargs,
                   "seed": cfg.seed, "workers": W, "worker_launches": launches, "worker_restarts": restarts,
                   "updates": int(counters[:, 1].sum()), "steps": step, **cost,
                   "steps_per_s": (step - base) / max(cost["wall_s"] - meter.prev_wall, 1e-9), "best_eval": best}
        if replay_info is not None:
            summary["replay_buffer"] = replay_info
        if cfg.final_eval_episodes > 0:
            ev = agent.evaluate(cfg.final_eval_episodes, seed=cfg.seed + 20_000)
            summary["final_eval"] = {k: ev[k] for k in ("mean", "std", "episodes", "deterministic", "seed")}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return agent, summary
