"""``contrl`` command line: train | eval | play | plot | compare | tune | doctor.

Errors caused by the input print one line (``contrl: error: ...``) and exit 2, without a
traceback. Ctrl-C during training saves a checkpoint, prints how to resume, and exits 130
(SIGTERM: the same, exit 143).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from contrl.errors import ContrlError, Fault, one_line_warnings


def _fmt_eval(ev: dict) -> str:
    kind = "deterministic" if ev["deterministic"] else "stochastic"
    return f"{ev['mean']:.2f} +- {ev['std']:.2f} over {ev['episodes']} episodes ({kind})"


def cmd_train(a: argparse.Namespace) -> int:
    from contrl.api import train
    from contrl.config import describe_keys, parse_assignments
    from contrl.errors import Interrupted

    if a.help_keys:
        print("config keys (--set key=value; bare names resolve to the algorithm's update rule, then net;"
              " a3c reads a2c.* and defaults to n_envs=1 per worker):")
        print(describe_keys())
        return 0
    if a.resume is None and a.algo is None:
        raise ContrlError("give an algorithm (contrl train ppo --env CartPole-v1) or --resume RUN")
    overrides = parse_assignments(a.set, "--set")
    if a.workers is not None:
        overrides = {"workers": a.workers, **overrides}
    if a.power_watts is not None:
        overrides = {"power_watts": a.power_watts, **overrides}
    if a.runner is not None:
        overrides = {"runner": a.runner, **overrides}
    if a.ray_address is not None:
        overrides = {"ray_address": a.ray_address, **overrides}
    if a.buffer_size is not None:
        if (a.algo or "") != "acer":
            raise ContrlError("--buffer-size applies to acer (the replay memory); drop it for other algorithms")
        overrides = {"buffer_size": a.buffer_size, **overrides}
    env_kwargs = parse_assignments(a.env_kwargs, "--env-kwargs")
    try:
        agent = train(a.algo or "ppo", a.env, steps=a.steps, seed=a.seed, preset=a.preset,
                      env_kwargs=env_kwargs, overrides=overrides, net=a.net, mask_velocity=a.mask_velocity,
                      out=a.out, force=a.force,
                      resume=a.resume, quiet=a.quiet, tensorboard=not a.no_tensorboard)
    except Interrupted as e:
        print(f"contrl: {e}", file=sys.stderr)
        return e.exit_code
    s = agent.summary
    print(f"run folder: {s['run_dir']}")
    if "final_eval" in s:
        print(f"final evaluation: {_fmt_eval(s['final_eval'])}")
    print(f"best periodic evaluation: {s['best_eval']:.2f}")
    if "replay_buffer" in s:
        rb = s["replay_buffer"]
        held = f"{rb['stored_transitions']:,} of " if "stored_transitions" in rb else ""
        print(f"replay buffer: {held}{rb['capacity_transitions']:,} transitions, {rb['bytes'] / 2**20:.1f} MiB"
              + (f" ({rb['per_worker_transitions']:,} per worker)" if "per_worker_transitions" in rb else ""))
    energy = (f", ~{s['energy_wh']:.2f} Wh at {s['power_watts']:g} W per busy core (estimate)"
              if s.get("energy_wh") is not None else "")
    print(f"compute: {s['steps']:,} steps in {s['wall_s']:.1f} wall-s, {s['cpu_s']:.1f} CPU-s "
          f"({s['steps_per_s']:,.0f} steps/s), peak memory {s['peak_mem_mb']:,.0f} MiB{energy}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from contrl.agent import load

    agent = load(a.target, prefer=a.checkpoint)
    env_kwargs = None
    if a.env_kwargs:
        from contrl.config import parse_assignments

        env_kwargs = {**agent.config.env_kwargs, **parse_assignments(a.env_kwargs, "--env-kwargs")}
    ev = agent.evaluate(a.episodes, seed=a.seed, deterministic=not a.stochastic, env=a.env, env_kwargs=env_kwargs)
    if a.json:
        print(json.dumps(ev))
    else:
        print(f"{agent.config.algo} on {a.env or agent.config.env}: {_fmt_eval(ev)}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from contrl.compare import compare

    steps = None if a.steps is None else int(a.steps)
    if steps is not None and steps != a.steps:
        raise ContrlError(f"--steps must be a whole number, got {a.steps}")
    res = compare(a.env, a.algos, steps, a.seeds, a.jobs, a.out, a.env_kwargs, a.threshold, sets=a.set,
                  preset=a.preset, max_failures=a.max_failures, log=lambda line: print(line, flush=True))
    print((Path(res["out"]) / "compare.md").read_text())
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from contrl.config import parse_assignments
    from contrl.tune import tune

    res = tune(a.algo, a.env, a.trials, steps=int(a.steps) if a.steps else None, storage=a.storage, timeout=a.timeout,
               out=a.out, net=a.net, env_kwargs=parse_assignments(a.env_kwargs, "--env-kwargs"), seed=a.seed,
               seeds=a.seeds, fixed=parse_assignments(a.set), search=parse_assignments(a.search, "--search", raw=True),
               add=a.add_trials, log=lambda line: print(line, flush=True))
    print(f"best: {res['best_value']:.2f} (trial {res['best_trial']}); train with: contrl train {a.algo} "
          f"--preset {res['preset']}")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from contrl.doctor import run

    return run(lambda line: print(line, flush=True))


def cmd_play(a: argparse.Namespace) -> int:
    from contrl.agent import load
    from contrl.record.video import play

    agent = load(a.target, prefer=a.checkpoint)
    out = play(agent, episodes=a.episodes, video=a.video, seed=a.seed, deterministic=not a.stochastic)
    for i, r in enumerate(out["returns"]):
        print(f"episode {i + 1}: return {r:.2f}")
    if out["video"]:
        print(f"video: {out['video']} ({out['frames']} frames)")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from contrl.record.plots import plot_runs

    out = plot_runs(a.runs, a.out, window=a.window)
    print(f"plot: {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other input error
        raise ContrlError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="contrl", description="Train, evaluate, record and compare actor-critic agents.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, required=True)

    t = sub.add_parser("train", help="train an agent")
    t.add_argument("algo", nargs="?", help="algorithm: ppo | a2c | a3c | acer")
    t.add_argument("--env", help="Gymnasium id (LunarLander-v3) or package.module:ClassName")
    t.add_argument("--steps", type=float, help="total environment steps (1e6 or 1000000)")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int, help="async/ray runners: worker processes or Ray actors (default 2)")
    t.add_argument("--runner", choices=["sync", "async", "ray"],
                   help="sync: n_envs envs in lock-step, one learner (ppo, a2c, acer default); async: Hogwild "
                        "--workers (a3c default, acer); ray: --workers Ray actors x n_envs envs (every algorithm; "
                        'acer with gradient workers: --set ray_pattern=async; pip install "contrl[ray]")')
    t.add_argument("--ray-address", metavar="ADDR",
                   help="ray runner: join a running Ray cluster (auto, or HOST:PORT); default: a local Ray for the run")
    t.add_argument("--power-watts", type=float, metavar="W",
                   help="estimate energy as CPU-seconds x W (watts per busy core; e.g. 15 for a laptop core)")
    t.add_argument("--buffer-size", type=float, metavar="N",
                   help="acer: replay capacity in transitions (default 50000; the summary reports its memory)")
    t.add_argument("--net", choices=["mlp", "lstm"],
                   help="network: mlp (default) or lstm (recurrent; picks NAME-lstm presets, e.g. chapter-lstm)")
    t.add_argument("--mask-velocity", action="store_true",
                   help="train on the env with its velocities hidden (CartPole, Pendulum, LunarLander, "
                        "MountainCarContinuous), e.g. contrl/CartPoleNoVel-v1")
    t.add_argument("--preset", help="preset name (e.g. chapter) or a YAML file")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set lr=1e-3 net.hidden=[128,128]")
    t.add_argument("--env-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="keyword arguments for gymnasium.make, e.g. continuous=true")
    t.add_argument("--out", help="run folder (default runs/ALGO-ENV-sSEED)")
    t.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--no-tensorboard", action="store_true", help="CSV logs only")
    t.add_argument("--help-keys", action="store_true", help="list every config key and its default")
    t.set_defaults(func=cmd_train)

    for name, helptext in (("eval", "evaluate a trained agent"), ("play", "watch or record a trained agent")):
        e = sub.add_parser(name, help=helptext)
        e.add_argument("target", metavar="RUN_OR_CHECKPOINT")
        e.add_argument("--episodes", type=int, default=10 if name == "eval" else 1)
        e.add_argument("--seed", type=int, default=0)
        g = e.add_mutually_exclusive_group()
        g.add_argument("--deterministic", action="store_true", help="act with the mode (default)")
        g.add_argument("--stochastic", action="store_true", help="sample actions")
        e.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                       help="which checkpoint of a run folder (default best, else latest)")
        if name == "eval":
            e.add_argument("--env", help="evaluate on another env with the same spaces")
            e.add_argument("--env-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
            e.add_argument("--json", action="store_true", help="print the result as JSON")
            e.set_defaults(func=cmd_eval)
        else:
            e.add_argument("--video", help="record to this .mp4 or .gif instead of showing a window")
            e.set_defaults(func=cmd_play)

    c = sub.add_parser("compare", help="several algorithms x seeds on one env: tables and plots")
    c.add_argument("--env", required=True, help="Gymnasium id or package.module:ClassName")
    c.add_argument("--algos", required=True, help="comma-separated: ppo,ppo-lstm,a2c,a3c,acer (NAME-lstm: --net lstm)")
    c.add_argument("--steps", type=float, help="env steps per run (default: each algorithm's preset budget)")
    c.add_argument("--seeds", default="3", help="a count (5: seeds 0-4), a range (10-14; one seed: 7-7) or a "
                                                "list (0,3,7); default 3")
    c.add_argument("--jobs", type=int, default=1, help="runs at once (default 1; each a3c/async run uses --workers "
                                                        "processes)")
    c.add_argument("--out", help="folder for the runs, tables and plots (default runs/compare-ENV)")
    c.add_argument("--env-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    c.add_argument("--threshold", type=float, help="reward threshold (default: the env's, e.g. 475 for CartPole-v1)")
    c.add_argument("--preset", help="preset name or YAML file for every run (default: picked by env id)")
    c.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (e.g. --set a2c.lr=1e-3 n_envs=16)")
    c.add_argument("--max-failures", type=int, metavar="K",
                   help="once K runs of an algorithm end below the threshold, start no more of its runs "
                        "(e.g. 2 for a 4-of-5 criterion); the same command without it runs them later")
    c.set_defaults(func=cmd_compare)

    tu = sub.add_parser("tune", help="Optuna search over an algorithm's hyper-parameters -> a preset")
    tu.add_argument("algo", help="ppo | a2c | a3c | acer")
    tu.add_argument("--env", required=True, help="Gymnasium id or package.module:ClassName")
    tu.add_argument("--trials", type=int, required=True, help="trials to run in this call (0: only add trials "
                                                               "and write the outputs)")
    tu.add_argument("--steps", type=float, help="env steps per trial (default: the preset's)")
    tu.add_argument("--storage", help="Optuna storage, e.g. sqlite:///study.db (default OUT/study.db)")
    tu.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tu.add_argument("--out", help="folder for trials, best.yaml and study.png (default runs/tune-ALGO-ENV)")
    tu.add_argument("--net", choices=["mlp", "lstm"])
    tu.add_argument("--env-kwargs", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    tu.add_argument("--seed", type=int, default=0, help="first seed of each trial (and the sampler's seed)")
    tu.add_argument("--seeds", type=int, default=1, help="seeds per trial; its value is the mean of their final "
                                                          "evaluations (default 1)")
    tu.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="keys every trial keeps instead of searching them (e.g. --set n_envs=16)")
    tu.add_argument("--search", nargs="+", action="extend", default=[], metavar="KEY=LOW..HIGH|A|B",
                    help="search a key over your range or choices instead of the built-in ones "
                         "(e.g. --search a2c.lr=1e-4..1e-3 n_steps='5|16|32' net.hidden='256,256|64,64')")
    tu.add_argument("--add-trials", nargs="+", action="extend", default=[], metavar="CSV",
                    help="add the completed and pruned trials of a study's trials.csv (e.g. one committed from "
                         "another machine) to this study first; rows whose values this search cannot draw are "
                         "left out")
    tu.set_defaults(func=cmd_tune)

    d = sub.add_parser("doctor", help="check the installation: torch, Box2D, MuJoCo, rendering, video")
    d.set_defaults(func=cmd_doctor)

    pl = sub.add_parser("plot", help="learning curves of one or more runs")
    pl.add_argument("runs", nargs="+", metavar="RUN")
    pl.add_argument("--out", default="curves.png")
    pl.add_argument("--window", type=int, default=20, help="episodes in the moving average")
    pl.set_defaults(func=cmd_plot)
    return p


def _record(target: str, e: Fault) -> str:
    """An eval/play fault's details into the run folder's messages.log; where they went."""
    run = Path(target)
    run = run if run.is_dir() else run.parent.parent if run.parent.name == "checkpoints" else None
    if run is None or not e.details:
        return ""
    try:
        with open(run / "messages.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} contrl {sys.argv[1] if len(sys.argv) > 1 else ''}: "
                    f"{e}\n{e.details}\n")
    except OSError:
        return ""
    return f" (details: {run / 'messages.log'})"


def main(argv: Optional[list[str]] = None) -> int:
    one_line_warnings()
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ContrlError as e:
        where = _record(args.target, e) if isinstance(e, Fault) and hasattr(args, "target") else ""
        print(f"contrl: error: {e}{where}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("contrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
