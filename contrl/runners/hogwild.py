"""The asynchronous runner's envs backend (Hogwild; A3C, async ACER).

The process you start is the coordinator and the evaluator. It puts the model, the rule's
optimiser statistics (and ACER's average network) in shared memory and starts ``workers``
processes, each holding a ``Worker`` (its ``n_envs`` envs, copies of the model and the rule, a
replay memory of its own where the rule keeps one). A worker collects a segment and, for each
gradient its rule takes from it (A2C: one; ACER: the segment's, then its replays), hands the
gradient to the shared parameters, steps the shared rule (no lock) and copies the shared
weights back. A shared per-worker step counter makes the budget global. An iteration of the
loop is what the workers reported in ~0.1 s; a worker that dies is restarted from the current
weights on fresh seeds, at most ``max_restarts`` times; ``stop`` waits for them all. Hogwild
is not reproducible step for step: resume restores the learner's state and the workers start
on fresh seeds.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
import traceback
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Callable

import torch
import torch.multiprocessing as mp

from contrl.agent import Agent, build_model
from contrl.config import Config, config_from_dict
from contrl.envs.make import env_spaces
from contrl.envs.normalize import ObsNormalizer, WorkerObsNormalizer, merged_obs_stats, rms_to_row
from contrl.errors import Fault, NonFinite, one_line_warnings
from contrl.record.logger import StatsWindow
from contrl.runners.collect import Worker, episode_rows
from contrl.runners.loop import Envs, Restarts
from contrl.threads import set_threads

SEND_EVERY_S = 0.5  # how often a worker reports its statistics and episodes
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the coordinator's to handle: workers ignore them


def _worker(idx: int, launch: dict, cfg_json: str, rule, counters: torch.Tensor, base_step: int, stop, go, conn,
            obs_table, reward_table, threads: int, parent_pid: int) -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    one_line_warnings()
    set_threads(threads)
    step, n = base_step, len(launch["env_seeds"])
    try:
        cfg = config_from_dict(json.loads(cfg_json))
        norm = None if obs_table is None else (lambda dim: WorkerObsNormalizer(obs_table, idx + 1, dim, cfg.clip_obs))
        rewards = reward_table.numpy()[idx] if reward_table is not None else None  # its scaler: mean, var, count
        stats = {"mean": rewards[0], "var": rewards[1], "count": rewards[2]} if rewards is not None and rewards[2] else None
        w = Worker(cfg, launch["env_seeds"], launch["torch_seed"], norm, first=idx * n, reward_stats=stats)
        local, shared = w.rule.weights(), rule.weights()
        window, episodes = StatsWindow(), []
        conn.send(("ready",))
        while not go.wait(0.2):  # the first workers wait for the last to start: none runs ahead alone
            if stop.is_set() or os.getppid() != parent_pid:
                break

        def send():
            conn.send(("stats", window.sums, window.n, list(episodes)))
            episodes.clear()
            window.reset()

        last_send = time.monotonic()
        with torch.no_grad():
            torch._foreach_copy_(local, shared)
        while not stop.is_set() and os.getppid() == parent_pid:
            step = base_step + int(counters[:, 0].sum())
            if step >= cfg.steps:
                break
            if w.agent.obs_norm is not None:
                w.agent.obs_norm.sync()
            rule.set_progress(step / cfg.steps)
            episodes += episode_rows(w.collect(), step, w.n, idx * w.n)
            if rewards is not None:  # its reward scaler's statistics, for checkpoints and its restarts
                rewards[:] = (float(w.scaler.rms.mean), float(w.scaler.rms.var), w.scaler.rms.count)
            steps = w.rollout.T * w.n
            for stats in w.rule.updates(w.rollout, w.gen):  # A2C: one gradient; ACER: + its replays
                if not stats.get("skipped_updates"):  # (nan_policy skip_update: a non-finite one is dropped)
                    for p, q in zip(rule.params, w.rule.params):
                        p.grad = q.grad
                    rule.step()
                counters[idx, 0] += steps
                counters[idx, 1] += 1
                window.add(stats, steps)
                steps = 0
                with torch.no_grad():  # the next gradient (and rollout) reads the new shared weights
                    torch._foreach_copy_(local, shared)
            if time.monotonic() - last_send > SEND_EVERY_S:
                send()
                last_send = time.monotonic()
        if w.agent.obs_norm is not None:
            w.agent.obs_norm.sync()
        send()
        w.venv.close()
    except Exception as e:  # noqa: BLE001 - reported to the coordinator (which restarts the worker, or stops)
        try:
            msg = str(e) if isinstance(e, Fault) else f"{type(e).__name__}: {e}"
            details = getattr(e, "details", "") or traceback.format_exc()
            conn.send(("error", isinstance(e, NonFinite), msg, details, step + (getattr(e, "t", -1) + 1) * n))
        finally:
            os._exit(1)


class HogwildEnvs(Envs):
    timed_rows = True
    resumes = ("the shared model, the rule's state, the observation statistics and each worker's reward scaler; "
               "the workers start on fresh seeds (with empty replay memories)")

    def __init__(self, cfg: Config, log: Callable[[str], None], run_dir: Path):
        self.cfg, self.run_dir, self.log = cfg, run_dir, log
        self.observation_space, self.action_space = env_spaces(cfg.env, cfg.env_kwargs)
        self.W = self.worker_memories = cfg.workers
        self.n_per_update = cfg.n_envs
        self.steps_per_iteration = cfg.algo_config().n_steps * cfg.n_envs * self.W  # one round
        self.threads = max(1, min(cfg.threads, (os.cpu_count() or 1) // self.W))
        log(f"{cfg.algo}: {self.W} workers x {cfg.n_envs} env(s), {self.threads} torch thread(s) each")
        self.next_seed = cfg.seed
        self.procs: list = []

    def start(self, agent, rule, generator, episodes) -> None:
        super().start(agent, rule, generator, episodes)
        cfg, W = self.cfg, self.W
        rule.share_memory()
        spaces = self.observation_space, self.action_space
        obs_norm = ObsNormalizer(agent.obs_dim, cfg.clip_obs) if cfg.norm_obs else None
        self.eval_agent = Agent(cfg, build_model(cfg, *spaces), *spaces, obs_norm)
        self.obs_table = torch.zeros(W + 1, 2 * agent.obs_dim + 1, dtype=torch.float64).share_memory_() \
            if cfg.norm_obs else None
        self.counters = torch.zeros(W, 2, dtype=torch.int64).share_memory_()  # per worker: steps, updates
        # per worker: its reward scaler's statistics (mean, var, count of the discounted returns)
        self.reward_table = torch.zeros(W, 3, dtype=torch.float64).share_memory_() if cfg.norm_reward else None
        self.ctx = mp.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.go = self.ctx.Event()  # set once every worker has started (restarted ones go at once)
        self.conns: list = [None] * W  # one pipe per worker: a worker killed mid-message spoils only its own
        self.ready, self.restarts = [False] * W, Restarts(W, cfg.max_restarts, self.log)
        self.launches: list[dict] = []
        self.errors: dict[int, str] = {}
        self.sums: dict = {}
        self.count = self.counted = 0

    # -- workers ---------------------------------------------------------------------------------
    def _launch(self, i: int) -> None:
        seeds = list(range(self.next_seed, self.next_seed + self.cfg.n_envs))
        self.next_seed += self.cfg.n_envs
        info = {"worker": i, "env_seeds": seeds, "torch_seed": seeds[0], "step": self.base + self.counted}
        receiver, sender = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker, daemon=True, args=(
            i, info, self.cfg.to_json(), self.rule, self.counters, self.base, self.stop_event, self.go, sender,
            self.obs_table, self.reward_table, self.threads, os.getpid()))
        # children start with the stop signals blocked, so a Ctrl-C during their start-up cannot hit them
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        sender.close()
        if self.conns[i] is not None:
            self.conns[i].close()
        self.procs[i], self.conns[i], self.ready[i] = p, receiver, False
        self.launches.append({**info, "pid": p.pid})
        self.log(f"worker {i} started (pid {p.pid}, env seeds {seeds})")

    def _read(self, i: int) -> None:
        """Handle what worker i has sent; close its pipe once the worker has gone."""
        c = self.conns[i]
        try:
            while c.poll():
                msg = c.recv()
                if msg[0] == "error":
                    self.errors[i] = msg[1:]  # (non-finite?, message, details, step)
                elif msg[0] == "ready":
                    self.ready[i] = True
                else:
                    _, sums, count, episodes = msg
                    for k, v in sums.items():
                        self.sums[k] = self.sums.get(k, 0.0) + v
                    self.count += count
                    if episodes:
                        self.episodes(episodes)
        except (EOFError, OSError, pickle.UnpicklingError):
            c.close()
            self.conns[i] = None

    def _drain(self, timeout: float) -> None:
        """Handle every message waiting (waiting up to ``timeout`` for the first)."""
        live = {c: i for i, c in enumerate(self.conns) if c is not None}
        if not live:
            time.sleep(timeout)
        for c in mp_connection.wait(list(live), timeout) if live else []:
            self._read(live[c])

    def _check_workers(self) -> None:
        cfg = self.cfg
        for i, p in enumerate(self.procs):
            if p.exitcode is None or self.stop_event.is_set():
                continue
            if p.exitcode == 0 and self.base + int(self.counters[:, 0].sum()) >= cfg.steps:
                continue  # it saw the budget reached before this process did
            if self.conns[i] is not None:
                self._read(i)  # its last words (the error it reported) may still be in the pipe
            nonfinite, error, details, at = self.errors.pop(i, (False, None, "", None))
            if nonfinite:  # the shared weights never took it; restarting would meet it again
                e = NonFinite(f"worker {i}: {error}", details)
                e.step = at
                raise e
            reason = error or (f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}")
            if not self.ready[i] and error is None and p.exitcode > 0:
                reason += (" during start-up; if you call contrl.train from a script, put the call under "
                           "`if __name__ == '__main__':` (workers start by importing the script)")
            self.restarts.died(i, f"worker {i}", reason, "restarting it from the current global weights", details, at)
            self._launch(i)

    def _take(self) -> tuple[dict, int, int]:
        """What the workers reported since the last call: (mean statistics, env steps, updates)."""
        total = int(self.counters[:, 0].sum())
        out = ({k: v / self.count for k, v in self.sums.items()} if self.count else {}, total - self.counted,
               self.count)
        self.sums, self.count, self.counted = {}, 0, total
        return out

    # -- the backend's interface -----------------------------------------------------------------
    def iterate(self, step: int) -> tuple[dict, int, int]:
        if not self.procs:
            self.base = step
            if self.obs_table is not None:  # rows 1..W: nothing seen yet (count 0)
                rms_to_row(self.agent.obs_norm.rms, self.obs_table.numpy()[0])
            self.procs = [None] * self.W
            for i in range(self.W):
                self._launch(i)
        self._drain(0.1)
        self._check_workers()
        if not self.go.is_set() and all(self.ready):
            self.go.set()
        return self._take()

    def stop(self) -> tuple[dict, int, int]:
        self.stop_event.set()
        deadline = time.time() + 15
        while any(p.is_alive() for p in self.procs) and time.time() < deadline:
            self._drain(0.05)  # keep the pipes flowing so workers can flush and exit
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join()
        self._drain(0.0)
        return self._take()

    def snapshot(self, agent: Agent) -> Agent:
        self.eval_agent.model.load_state_dict(agent.model.state_dict())
        if self.obs_table is not None:
            self.eval_agent.obs_norm.rms = merged_obs_stats(self.obs_table.numpy())
        return self.eval_agent

    def state(self) -> dict:  # resumed workers start on fresh seeds (see the module doc)
        rewards = {"reward_stats": self.reward_table.clone()} if self.reward_table is not None else {}
        return {"next_seed": self.next_seed, **rewards}

    def load_state(self, ts: dict) -> None:
        old = json.loads(ts["meta"]).get("next_seed", self.cfg.seed + 1000)  # where earlier checkpoints kept it
        self.next_seed = int(ts.get("next_seed", old))
        if self.reward_table is not None and "reward_stats" in ts:
            self.reward_table.copy_(ts["reward_stats"])

    def summary(self) -> dict:
        return {"workers": self.W, "worker_launches": self.launches, "worker_restarts": self.restarts.counts,
                "updates": int(self.counters[:, 1].sum())}

    def close(self) -> None:
        if self.procs:
            self.stop()
