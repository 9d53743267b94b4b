"""The Ray runner on this machine: its overhead against the local runners, and steps/s vs actors.
(Not named ray.py: run as a script, that name would shadow the ray package.)

    python benchmarks/on_ray.py overhead --env LunarLander-v3 --steps 100000
    python benchmarks/on_ray.py actors --env LunarLander-v3 --steps 100000
    python benchmarks/on_ray.py overhead --algos a2c,a3c   # only those rows
    python benchmarks/on_ray.py overhead --algos a3c --only "hogwild,8 segments" --rounds 3
    python benchmarks/on_ray.py nodes --env LunarLander-v3 --steps 100000
    python benchmarks/on_ray.py cpu --env LunarLander-v3 --steps 100000 --segments 16
    python benchmarks/on_ray.py transport --segments 1,8,16,32
    python benchmarks/on_ray.py lag --segments 1,16 --seeds 0-6
    python benchmarks/on_ray.py nodeloss --steps 60000 --seeds 0-2

overhead: the same 8 envs and the same update rule stepped by the synchronous runner (in this
process, then in env subprocesses) and by the Ray runner (2 actors x 4 envs, then 1 actor x 8),
for PPO (rollouts of 8 x 256 steps) and A2C (rollouts of 8 x 5: a Ray round trip every 40
steps, the worst case; then 4 and 8 segments per request, ``ray_segments``), A3C on the Hogwild
runner vs the Ray runner (2 workers x 4 envs; 1, 4, 8 and 16 gradients per request), and
ACER (its LunarLander preset) synchronous on both, and asynchronous on Hogwild and on Ray.
actors: PPO on the Ray runner with 1, 2 and 4 actors of 4 envs each.
nodes: PPO and A3C on a loopback cluster of 1, 2 and 3 worker nodes (1 CPU, one actor each),
and the round trip to every actor alone.
cpu: A3C (``--segments``, default 8 per request) on Ray with 1 and 2 actors of 4 envs, and on the Hogwild runner
with 2 workers: the CPU-seconds of every process of the machine over each run (``/proc``, sampled
every 0.5 s), per 20-step gradient -- which process pays for what.
transport: what one answer of K gradients costs the driver, each actor and the raylet when
nothing else happens (arrays of the A3C runs' parameter count, no envs, no model).
lag: A3C's final return on CartPole-v1 (2 actors x 4 envs, 100k steps) per ``ray_segments`` and
seed -- whether the policy lag K segments bring costs learning.
nodeloss: PPO on CartPole-v1 on a loopback cluster of three worker nodes, per seed undisturbed
and with actor 0's node removed at the first evaluation: the final returns side by side.
Evaluation is off; each run prints one JSON line with steps/s over the whole run (Ray's start
included) and in the steady state (first to last progress row), then a table of ratios.
``--rounds N`` runs the chosen rows N times, interleaved (every row once per round), and the
table gives each row's median and every round's ratio to its base row: on a VM whose speed
drifts by 15% from one run to the next, only a ratio taken within one round means much.
``--only`` keeps the rows whose label contains one of its comma-separated words (the base rows
of the algorithms chosen always run).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile

PPO = dict(n_steps=256, batch_size=256, n_epochs=4, gamma=0.999, gae_lambda=0.98, ent_coef=0.01, lr=3e-4)
A2C = dict(n_steps=5, gamma=0.995, gae_lambda=1.0, lr=8.3e-4, ent_coef=1e-5, optimizer="rmsprop", alpha=0.99,
           eps=1e-5)


def _run(label: str, algo: str, env: str, steps: int, **overrides) -> dict:
    from contrl.api import train

    hp = {"ppo": PPO, "a2c": A2C, "a3c": A2C}.get(algo, {})  # acer: its LunarLander preset
    with tempfile.TemporaryDirectory() as d:
        agent = train(algo, env, steps=steps, seed=0, out=f"{d}/run", quiet=True, tensorboard=False,
                      overrides={**hp, "eval_every": 10**9, "eval_episodes": 1, "final_eval_episodes": 0, **overrides})
        with open(f"{d}/run/progress.csv") as f:
            rows = list(csv.DictReader(f))
    (w0, s0), (w1, s1) = [(float(r["wall_s"]), int(r["step"])) for r in (rows[0], rows[-1])]
    s = agent.summary
    r = {"label": label, "algo": algo, "steps": s["steps"], "wall_s": round(s["wall_s"], 1),
         "cpu_s": round(s["cpu_s"], 1), "steps_per_s": round(s["steps_per_s"]),
         "steady_steps_per_s": round((s1 - s0) / max(w1 - w0, 1e-9))}
    print(json.dumps(r), flush=True)
    return r


def overhead(env: str, steps: int, algos: list[str], rounds: int = 1, only: str = "") -> None:
    runs = [
        ("ppo sync 8 envs", "ppo", dict(n_envs=8, vec="inprocess")),
        ("ppo sync 8 env subprocesses", "ppo", dict(n_envs=8, vec="subprocess")),
        ("ppo ray 2 actors x 4", "ppo", dict(runner="ray", workers=2, n_envs=4)),
        ("ppo ray 1 actor x 8", "ppo", dict(runner="ray", workers=1, n_envs=8)),
        ("a2c sync 8 envs", "a2c", dict(n_envs=8, vec="inprocess")),
        ("a2c ray 2 actors x 4", "a2c", dict(runner="ray", workers=2, n_envs=4)),
        ("a2c ray 2 actors x 4, 4 segments", "a2c", dict(runner="ray", workers=2, n_envs=4, ray_segments=4)),
        ("a2c ray 2 actors x 4, 8 segments", "a2c", dict(runner="ray", workers=2, n_envs=4, ray_segments=8)),
        ("a3c hogwild 2 workers x 4", "a3c", dict(workers=2, n_envs=4)),
        ("a3c ray 2 actors x 4", "a3c", dict(runner="ray", workers=2, n_envs=4)),
        ("a3c ray 2 actors x 4, 4 segments", "a3c", dict(runner="ray", workers=2, n_envs=4, ray_segments=4)),
        ("a3c ray 2 actors x 4, 8 segments", "a3c", dict(runner="ray", workers=2, n_envs=4, ray_segments=8)),
        ("a3c ray 2 actors x 4, 16 segments", "a3c", dict(runner="ray", workers=2, n_envs=4, ray_segments=16)),
        ("acer sync 8 envs", "acer", dict(n_envs=8, vec="inprocess")),
        ("acer ray 2 actors x 4", "acer", dict(runner="ray", workers=2, n_envs=4)),
        ("acer hogwild 2 workers x 4", "acer", dict(runner="async", workers=2, n_envs=4)),
        ("acer ray async 2 actors x 4", "acer", dict(runner="ray", ray_pattern="async", workers=2, n_envs=4)),
    ]
    base = {"ppo": "ppo sync 8 envs", "a2c": "a2c sync 8 envs", "a3c": "a3c hogwild 2 workers x 4",
            "acer": "acer sync 8 envs", "acer async": "acer hogwild 2 workers x 4"}

    def base_of(label: str, algo: str) -> str:
        return base["acer async" if algo == "acer" and ("async" in label or "hogwild" in label) else algo]

    words = [w for w in only.split(",") if w]
    runs = [(label, algo, o) for label, algo, o in runs if algo in algos
            and (not words or label in base.values() or any(w in label for w in words))]
    rounds_of: dict = {label: [] for label, _, _ in runs}
    for _ in range(rounds):
        for label, algo, o in runs:
            rounds_of[label].append(_run(label, algo, env, steps, **o))
    print("\n| run | steps/s (steady) | steps/s (whole run) | vs the local runner (steady) |")
    print("|---|---:|---:|---:|")
    for label, algo, _ in runs:
        mine, theirs = rounds_of[label], rounds_of[base_of(label, algo)]
        steady = [r["steady_steps_per_s"] for r in mine]
        ratios = [a["steady_steps_per_s"] / b["steady_steps_per_s"] for a, b in zip(mine, theirs)]
        each = f" (rounds: {', '.join(f'{x:.2f}x' for x in ratios)})" if rounds > 1 else ""
        print(f"| {label} | {statistics.median(steady):,.0f} | "
              f"{statistics.median(r['steps_per_s'] for r in mine):,.0f} | "
              f"{statistics.median(ratios):.2f}x{each} |")


def actors(env: str, steps: int) -> None:
    rows = [_run(f"ppo ray {w} actor(s) x 4", "ppo", env, steps, runner="ray", workers=w, n_envs=4)
            for w in (1, 2, 4)]
    print("\n| actors x envs | steps/s (steady) | steps/s (whole run) | vs 1 actor (steady) |")
    print("|---|---:|---:|---:|")
    for w, r in zip((1, 2, 4), rows):
        print(f"| {w} x 4 | {r['steady_steps_per_s']:,} | {r['steps_per_s']:,} | "
              f"{r['steady_steps_per_s'] / rows[0]['steady_steps_per_s']:.2f}x |")


def nodes(env: str, steps: int) -> None:
    """PPO and A3C (4 gradients per request) on a cluster of 1, 2 and 3 worker nodes of 1 CPU
    each (raylets on this machine, a head without CPUs for the learner's driver, all on
    127.0.0.1), one actor of 4 envs per node; then the round trip alone: a request that steps
    nothing (``get_state``, a 1-env actor's state back) to every actor, timed."""
    import os
    import time

    from contrl.runners.ray_runner import loopback_only

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every raylet binds 127.0.0.1 only
    loopback_only()
    from ray.cluster_utils import Cluster

    rows = []
    for n in (1, 2, 3):
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(n):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        try:
            for label, algo, extra in (("ppo", "ppo", {}), ("a3c, 4 segments", "a3c", {"ray_segments": 4})):
                r = _run(f"{label}, {n} node(s)", algo, env, steps, runner="ray", ray_address=c.address, workers=n,
                         n_envs=4, **extra)
                rows.append((n, label, r))
            import ray

            from contrl.runners.ray_runner import EnvActor

            ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
            try:
                from contrl.config import build_config

                cfg = build_config("ppo", env, overrides={"n_envs": 1})
                remote = ray.remote(EnvActor)
                actors = [remote.options(num_cpus=1, scheduling_strategy="SPREAD").remote(
                    cfg.to_json(), [i], i, 1, False, i) for i in range(n)]
                ray.get([a.get_state.remote() for a in actors])
                t, k = time.perf_counter(), 200
                for _ in range(k):
                    ray.get([a.get_state.remote() for a in actors])
                ms = (time.perf_counter() - t) / k * 1000
                print(json.dumps({"nodes": n, "round_trip_ms": round(ms, 2)}), flush=True)
                rows.append((n, "round trip", {"round_trip_ms": ms}))
            finally:
                ray.shutdown()
        finally:
            c.shutdown()
    print("\n| worker nodes (1 CPU each) | ppo steps/s (steady) | a3c, 4 segments, steps/s (steady) | "
          "get_state of every actor |")
    print("|---|---:|---:|---:|")
    for n in (1, 2, 3):
        got = {label: r for m, label, r in rows if m == n}
        print(f"| {n} | {got['ppo']['steady_steps_per_s']:,} | {got['a3c, 4 segments']['steady_steps_per_s']:,} | "
              f"{got['round trip']['round_trip_ms']:.2f} ms |")


def _cpu_of_processes() -> dict:
    """{pid: (CPU-seconds so far, command line)} of every process (Linux /proc)."""
    import glob
    import os

    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for path in glob.glob("/proc/[0-9]*"):
        try:
            fields = open(path + "/stat").read().rsplit(")", 1)[1].split()
            cmd = open(path + "/cmdline").read().replace("\0", " ").strip()[:70]
        except OSError:
            continue
        out[int(path[6:])] = ((int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


def cpu(env: str, steps: int, segments: int = 8) -> None:
    import threading

    for label, runner, workers in (("ray, 1 actor x 4", "ray", 1), ("ray, 2 actors x 4", "ray", 2),
                                   ("hogwild, 2 workers x 4", "async", 2)):
        before, last, stop = _cpu_of_processes(), {}, threading.Event()

        def watch() -> None:  # the actors and workers are gone when the run returns: keep their last figures
            while not stop.wait(0.5):
                last.update(_cpu_of_processes())

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        extra = {"ray_segments": segments} if runner == "ray" else {}
        r = _run(f"a3c {label}", "a3c", env, steps, runner=runner, workers=workers, n_envs=4, **extra)
        stop.set()
        thread.join()
        last.update(_cpu_of_processes())
        gradients = r["steps"] / A2C["n_steps"] / 4
        rows = sorted(((c - before.get(pid, (0.0, ""))[0], cmd) for pid, (c, cmd) in last.items()), reverse=True)
        print(f"\n{label}: {r['steady_steps_per_s']:,} steps/s (steady), {gradients:,.0f} gradients")
        for seconds, cmd in rows[:6]:
            if seconds > 0.2:
                print(f"  {seconds:7.2f} CPU-s  {1000 * seconds / gradients:5.2f} ms per gradient  {cmd}")


def transport(env: str, answers: int, segments: list[int]) -> None:
    """What moving one answer costs each process, without any env or model work: two actors
    answer ``[K, P]`` float32 arrays (P: the parameters of the A3C runs above) to a driver that
    puts P-float weights in the object store per request and copies each row out, as the
    asynchronous pattern's learner does."""
    import os
    import time

    import numpy as np
    import ray

    from contrl.agent import build_model
    from contrl.config import build_config
    from contrl.envs.make import env_spaces
    from contrl.runners.ray_runner import loopback_only

    cfg = build_config("a3c", env, overrides={**A2C, "workers": 2, "n_envs": 4})
    P = sum(p.numel() for p in build_model(cfg, *env_spaces(cfg.env, cfg.env_kwargs)).parameters())
    undo = loopback_only()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1)
        class Answerer:
            def __init__(self, k: int):
                self.g = np.ones((k, P), np.float32)

            def grads(self, weights):
                np.array(weights)  # the actor copies the weights in
                return {"grads": self.g.copy(), "stats": [{"loss": 1.0}] * len(self.g)}

            def pid(self) -> int:
                return os.getpid()

        print(f"\n{P:,} parameters ({P * 4 / 1e3:,.0f} kB), {answers} answers per row\n")
        print("| segments per answer | driver, ms per answer | actor, ms per answer | raylet, ms per answer | "
              "all, ms per gradient |")
        print("|---:|---:|---:|---:|---:|")
        for k in segments:
            actors = [Answerer.remote(k) for _ in range(2)]
            w = np.zeros(P, np.float32)
            ray.get([a.grads.remote(w) for a in actors])
            pids = set(ray.get([a.pid.remote() for a in actors]))
            before, c0 = _cpu_of_processes(), time.process_time()
            pending = {a.grads.remote(ray.put(w)): a for a in actors}
            for _ in range(answers):
                [done], _ = ray.wait(list(pending), num_returns=1)
                a = pending.pop(done)
                for g in ray.get(done)["grads"]:
                    g.copy()
                pending[a.grads.remote(ray.put(w))] = a
            ray.get(list(pending))
            driver, after = time.process_time() - c0, _cpu_of_processes()
            spent = {pid: c - before.get(pid, (0.0, ""))[0] for pid, (c, _) in after.items()}
            actor = sum(spent.get(pid, 0.0) for pid in pids) / answers  # the answering actor's side
            raylet = sum(t for pid, t in spent.items() if "raylet" in after[pid][1]) / answers
            per = 1000 / answers
            print(f"| {k} | {driver * per:.2f} | {actor * 1000:.2f} | {raylet * 1000:.2f} | "
                  f"{(driver / answers + actor + raylet) * 1000 / k:.2f} |")
            for a in actors:
                ray.kill(a)
    finally:
        ray.shutdown()
        undo()


def lag(env: str, steps: int, segments: list[int], seeds: list[int]) -> None:
    """Whether the policy lag of ``ray_segments`` costs A3C learning: its defaults on ``env``,
    2 actors x 4 envs, each K and seed; the final return (20 deterministic episodes)."""
    from contrl.api import train

    finals: dict = {k: [] for k in segments}
    for k in segments:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as d:
                agent = train("a3c", env, steps=steps, seed=seed, out=f"{d}/run", quiet=True, tensorboard=False,
                              overrides={"runner": "ray", "workers": 2, "n_envs": 4, "ray_segments": k})
            finals[k].append(agent.summary["final_eval"]["mean"])
            print(json.dumps({"ray_segments": k, "seed": seed, "final": round(finals[k][-1], 1),
                              "steps_per_s": round(agent.summary["steps_per_s"])}), flush=True)
    print(f"\n| `ray_segments` | finals, seeds {','.join(map(str, seeds))} | mean |")
    print("|---:|---|---:|")
    for k in segments:
        print(f"| {k} | {', '.join(f'{x:.1f}' for x in finals[k])} | {statistics.mean(finals[k]):.1f} |")


def nodeloss(env: str, steps: int, seeds: list[int]) -> None:
    """PPO's preset on a loopback cluster (a head without CPUs, three worker nodes of 1 CPU, 2
    actors x 4 envs): per seed, a run left alone, then the same run with the node actor 0 runs
    on removed at the first periodic evaluation (a fifth of the steps) -- Ray restarts that
    actor on the spare node. The final returns side by side, and what the run's log says."""
    import os
    import re
    import threading

    from contrl.api import train
    from contrl.runners.ray_runner import loopback_only

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every raylet binds 127.0.0.1 only
    loopback_only()
    from ray.cluster_utils import Cluster

    rows = []
    for seed in seeds:
        finals = []
        for lose in (False, True):
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(3):
                c.add_node(num_cpus=1)
            c.wait_for_nodes()
            with tempfile.TemporaryDirectory() as d:
                run, lost = f"{d}/run", []

                def hook(step, mean):
                    if lose and not lost:
                        with open(f"{run}/messages.log") as f:
                            node = re.search(r"ray actor 0 runs on node (\w+)", f.read()).group(1)
                        victim = next(w for w in c.worker_nodes if w.node_id.startswith(node))
                        lost.append(step)
                        threading.Timer(0.2, lambda: c.remove_node(victim)).start()

                try:
                    agent = train("ppo", env, steps=steps, seed=seed, out=run, quiet=True, tensorboard=False,
                                  overrides={"runner": "ray", "ray_address": c.address, "workers": 2, "n_envs": 4,
                                             "eval_every": steps // 5}, eval_hook=hook)
                finally:
                    c.shutdown()
                with open(f"{run}/messages.log") as f:
                    moved = [ln.split(" ", 2)[2].strip() for ln in f if "died" in ln or "moved" in ln]
            s = agent.summary
            finals.append(s["final_eval"]["mean"])
            print(json.dumps({"seed": seed, "node_lost_at": lost[0] if lost else None, "final": round(finals[-1], 1),
                              "restarts": s["ray_actor_restarts"], "log": moved}), flush=True)
        rows.append((seed, *finals))
    print("\n| seed | final, undisturbed | final, a node lost at the first evaluation |")
    print("|---:|---:|---:|")
    for seed, a, b in rows:
        print(f"| {seed} | {a:.1f} | {b:.1f} |")


def _ints(text: str) -> list[int]:
    """1,8,16 or 0-6."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["overhead", "actors", "nodes", "cpu", "transport", "lag", "nodeloss"])
    ap.add_argument("--env", default=None, help="default LunarLander-v3; lag and nodeloss: CartPole-v1")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--algos", default="ppo,a2c,a3c,acer", help="overhead: the algorithms to run (default all)")
    ap.add_argument("--rounds", type=int, default=1, help="overhead: run the rows this many times, interleaved")
    ap.add_argument("--only", default="", help="overhead: only rows whose label has one of these words (a,b)")
    ap.add_argument("--segments", default=None,
                    help="cpu: ray_segments of the Ray runs (default 8); transport: a list (default 1,8,16,32); "
                         "lag: a list (default 1,16)")
    ap.add_argument("--seeds", default="0-6", help="lag, nodeloss: the seeds (a range 0-6 or a list 0,3)")
    ap.add_argument("--answers", type=int, default=500, help="transport: answers per row")
    args = ap.parse_args()
    env = args.env or ("CartPole-v1" if args.what in ("lag", "nodeloss") else "LunarLander-v3")
    if args.what == "overhead":
        overhead(env, args.steps, args.algos.split(","), args.rounds, args.only)
    elif args.what == "cpu":
        cpu(env, args.steps, int(args.segments or 8))
    elif args.what == "transport":
        transport(env, args.answers, _ints(args.segments or "1,8,16,32"))
    elif args.what == "lag":
        lag(env, args.steps, _ints(args.segments or "1,16"), _ints(args.seeds))
    elif args.what == "nodeloss":
        nodeloss(env, args.steps, _ints(args.seeds))
    else:
        {"actors": actors, "nodes": nodes}[args.what](env, args.steps)


if __name__ == "__main__":
    main()
