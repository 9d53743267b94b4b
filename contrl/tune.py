"""``contrl tune``: an Optuna search over an algorithm's hyper-parameters.

Each trial is one ``contrl train`` run (in-process, ``OUT/trial-NNNN``) with values drawn from the
algorithm's search space (``SPACES``, by update rule: a3c uses a2c's) on top of the env's preset.
The search covers the rule's keys, the run's ``n_envs``, ``norm_obs`` and ``norm_reward``,
(for an MLP) the network's widths and activation and (for Box actions) the Gaussian's initial
log-std; ``--set`` fixes keys for every trial instead, and ``--search KEY=LOW..HIGH`` or
``KEY=A|B|C`` narrows a searched key to the user's range or choices. After every periodic
evaluation the trial reports its return, and Optuna's median pruner stops trials that fall
below the median of earlier ones at the same step (not before a quarter of the budget, nor
before 5 completed trials have reported there: early evaluations of a task like LunarLander say
little about where a run ends). A trial's value is its final evaluation (mean over 10 episodes,
deterministic unless ``eval_deterministic=false``); with ``--seeds K`` a trial trains K seeds and its
value is the mean of their final evaluations (pruning watches the first), so a lucky seed does not
win the study. An interrupted call (Ctrl-C) still writes the outputs below for the trials it
completed.

The study lives in ``--storage`` (default ``sqlite:///OUT/study.db``), so calling the same
command again continues it with more trials. After each call the best trial so far is written
as a preset, ``OUT/best.yaml`` (``contrl train ALGO --preset OUT/best.yaml``), with a plot of the
study, ``OUT/study.png`` (every trial's value, pruned ones marked, and the best so far), and
every trial's values and result, ``OUT/trials.csv``. That record can seed another study
(``--add-trials OUT/trials.csv``: a search continued on another machine, from its committed
record): its completed and pruned trials join the study as if run there, so the sampler learns
from them (they bring no learning curves: the pruner compares a trial with the curves of the
completed trials run in this study, once there are 5 of them).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from contrl.config import ALGOS, build_config
from contrl.errors import ContrlError, Fault


def _ppo(trial, cfg) -> dict:
    n_steps = trial.suggest_categorical("n_steps", [64, 128, 256, 512, 1024, 2048])
    batch = trial.suggest_categorical("batch_size", [32, 64, 128, 256, 512])
    return {"lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True), "n_steps": n_steps,
            "anneal_lr": trial.suggest_categorical("anneal_lr", [False, True]),
            "batch_size": min(batch, n_steps * cfg.n_envs),  # a minibatch cannot exceed the rollout
            "n_epochs": trial.suggest_categorical("n_epochs", [3, 5, 10, 20]),
            "gamma": trial.suggest_categorical("gamma", [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.8, 0.9, 0.95, 0.98, 1.0]),
            "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.05, log=True),
            "vf_coef": trial.suggest_float("vf_coef", 0.2, 1.0),
            "max_grad_norm": trial.suggest_categorical("max_grad_norm", [0.3, 0.5, 1.0, 5.0])}


def _a2c(trial, cfg) -> dict:
    return {"lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True),
            "anneal_lr": trial.suggest_categorical("anneal_lr", [False, True]),
            "n_steps": trial.suggest_categorical("n_steps", [5, 8, 16, 32]),
            "gamma": trial.suggest_categorical("gamma", [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 0.98, 1.0]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.05, log=True),
            "vf_coef": trial.suggest_float("vf_coef", 0.2, 1.0),
            "max_grad_norm": trial.suggest_categorical("max_grad_norm", [0.3, 0.5, 1.0, 5.0]),
            "normalize_advantage": trial.suggest_categorical("normalize_advantage", [False, True]),
            "optimizer": trial.suggest_categorical("optimizer", ["rmsprop", "adam"])}


def _acer(trial, cfg) -> dict:
    n_steps = trial.suggest_categorical("n_steps", [5, 10, 20])
    replay_ratio = trial.suggest_categorical("replay_ratio", [0, 1, 2, 4])
    buffer = trial.suggest_categorical("buffer_size", [10_000, 50_000, 100_000])
    return {"lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True), "n_steps": n_steps,
            "anneal_lr": trial.suggest_categorical("anneal_lr", [False, True]),
            "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.05, log=True),
            "c": trial.suggest_categorical("c", [1.0, 5.0, 10.0]),
            "replay_ratio": replay_ratio,
            "buffer_size": max(buffer, n_steps * cfg.n_envs),  # at least one segment
            "replay_start": min(1000, max(buffer, n_steps * cfg.n_envs)),
            "trust_region": trial.suggest_categorical("trust_region", [True, False]),
            "delta": trial.suggest_categorical("delta", [0.1, 0.5, 1.0, 2.0, 5.0]),
            "trust_region_on": trial.suggest_categorical("trust_region_on", ["probs", "logits"]),
            "avg_decay": trial.suggest_categorical("avg_decay", [0.99, 0.995, 0.999]),
            "optimizer": trial.suggest_categorical("optimizer", ["rmsprop", "adam"])}


def _net(trial) -> dict:
    return {"hidden": trial.suggest_categorical("net.hidden", ["64,64", "128,128", "256,256", "256"]),
            "activation": trial.suggest_categorical("net.activation", ["tanh", "relu"])}


def _gaussian(trial) -> dict:
    """Box actions: the Gaussian policy's initial log-std (any network type)."""
    return {"net.log_std_init": trial.suggest_categorical("net.log_std_init", [-2.0, -1.0, -0.5, 0.0])}


def _run(trial, cfg) -> dict:
    """Run keys every rule shares: envs per runner/worker, observation and reward normalisation."""
    return {"n_envs": trial.suggest_categorical("n_envs", [4, 8, 16, 32]),
            "norm_obs": trial.suggest_categorical("norm_obs", [False, True]),
            "norm_reward": trial.suggest_categorical("norm_reward", [False, True])}


SPACES = {"ppo": _ppo, "a2c": _a2c, "acer": _acer}  # by update rule
TRIAL_KEYS = {"eval_episodes": 5, "final_eval_episodes": 10}  # the search's own run keys, not the preset's


class _Kept:
    """The trial as the search spaces see it: a key the user fixed (--set) is answered with its value
    and never suggested, so the study (its sampler, trials.csv, the plots) holds only the searched
    keys; a key the user narrowed (--search) is suggested from the user's range or choices instead
    of the space's own. Space names: a rule's keys bare (``lr``), run and network keys as written
    (``n_envs``, ``net.hidden``, whose choices are comma-joined)."""

    def __init__(self, trial, kept: dict, narrowed: Optional[dict] = None):
        self.trial, self.kept, self.narrowed = trial, kept, narrowed or {}

    def _get(self, name: str, kind: str, *args, **kwargs):
        if name in self.kept:
            v = self.kept[name]
            return ",".join(str(h) for h in v) if isinstance(v, (list, tuple)) else v
        spec = self.narrowed.get(name)
        if spec is None:
            return getattr(self.trial, f"suggest_{kind}")(name, *args, **kwargs)
        if spec[0] == "choices":
            return self.trial.suggest_categorical(name, spec[1])
        _, low, high, is_int = spec
        if is_int:
            return self.trial.suggest_int(name, int(low), int(high), log=kwargs.get("log", False))
        return self.trial.suggest_float(name, low, high, log=kwargs.get("log", False))

    def suggest_categorical(self, name, choices):
        return self._get(name, "categorical", choices)

    def suggest_float(self, name, low, high, **kwargs):
        return self._get(name, "float", low, high, **kwargs)

    def suggest_int(self, name, low, high, **kwargs):
        return self._get(name, "int", low, high, **kwargs)


class _Recorder:
    """A stand-in trial that answers each suggestion with its first choice (or its low end) and
    notes what the space asked: which names it searches, and how (``--search`` is checked
    against this)."""

    def __init__(self):
        self.asked: dict = {}

    def suggest_categorical(self, name, choices):
        self.asked[name] = ("categorical", list(choices), False)
        return choices[0]

    def suggest_float(self, name, low, high, **kwargs):
        self.asked[name] = ("float", [low, high], kwargs.get("log", False))
        return low

    def suggest_int(self, name, low, high, **kwargs):
        self.asked[name] = ("int", [low, high], kwargs.get("log", False))
        return low


class _Misfit(Exception):
    """A recorded trial whose values this search could not have drawn."""


def _same(a, b) -> bool:
    """A recorded value equals a choice or a kept value (bools only equal bools; numbers by value)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class _Replay:
    """A stand-in trial that answers each suggestion with a recorded trial's value (``row``: space
    name -> value) and notes the parameters and distributions Optuna needs to hold that trial as
    one of its own. A value the suggestion could not have drawn raises :class:`_Misfit`."""

    def __init__(self, optuna, row: dict):
        self.optuna, self.row = optuna, row
        self.params: dict = {}
        self.distributions: dict = {}

    def _value(self, name: str):
        if name not in self.row:
            raise _Misfit(f"it has no value for {name}, which this search draws")
        return self.row[name]

    def suggest_categorical(self, name, choices):
        v = self._value(name)
        if name == "net.hidden" and isinstance(v, (list, tuple)):
            v = ",".join(str(h) for h in v)
        match = [c for c in choices if _same(c, v)]
        if not match:
            raise _Misfit(f"{name}={v} is not among this search's choices {'|'.join(map(str, choices))}")
        self.params[name] = match[0]
        self.distributions[name] = self.optuna.distributions.CategoricalDistribution(list(choices))
        return match[0]

    def _range(self, name, low, high, kind, log):
        v = self._value(name)
        slack = 1e-9 * max(abs(low), abs(high))  # the record's decimal text of a drawn float
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low - slack <= v <= high + slack:
            raise _Misfit(f"{name}={v} is outside this search's range {low}..{high}")
        v = min(max(v, low), high)
        if kind == "int":
            v = int(v)
            dist = self.optuna.distributions.IntDistribution(low, high, log=log)
        else:
            v = float(v)
            dist = self.optuna.distributions.FloatDistribution(low, high, log=log)
        self.params[name], self.distributions[name] = v, dist
        return v

    def suggest_float(self, name, low, high, **kwargs):
        return self._range(name, low, high, "float", kwargs.get("log", False))

    def suggest_int(self, name, low, high, **kwargs):
        return self._range(name, low, high, "int", kwargs.get("log", False))


def add_trials(optuna, study, path: Path, algo: str, base, fixed: Optional[dict], continuous: bool,
               narrowed: dict, seeds: int) -> tuple[int, list[str]]:
    """Add the completed and pruned trials of a ``trials.csv`` record (this command's own output,
    from an earlier study or another machine) to ``study``, as Optuna trials of this search: their
    values and the parameters this search draws (checked against its ranges and choices, --set and
    --search included) must fit, or the row is left out with the reason; a record of another budget
    (--steps) or another number of seeds per trial is refused whole. A row already added (the file
    name and its trial number, kept in the trial) is not added twice. Returns (trials added, the
    reasons for the rows left out)."""
    import csv

    from contrl.config import parse_scalar, resolve_key

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ContrlError(f"--add-trials: cannot read '{path}' ({e.strerror}); give the trials.csv of a "
                          f"study") from None
    meta = ("trial", "state", "value", "finals", "last_step", "from")
    if not rows or not {"trial", "state", "value"} <= set(rows[0]):
        raise ContrlError(f"--add-trials: '{path}' is not a contrl tune trials.csv (it needs the columns trial, "
                          f"state, value and one per key)")
    names: dict = {}  # column -> space name
    for col in rows[0]:
        if col not in meta:
            try:
                names[col] = _space_name(col, algo)
            except ContrlError as e:
                raise ContrlError(f"--add-trials: '{path}' column {col}: {e}") from None
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("last_step")]
    if done:  # the record's budget and seeds per trial: those of its completed trials
        last = max(int(float(r["last_step"])) for r in done)
        if not base.steps * 0.95 <= last <= base.steps * 1.1:
            raise ContrlError(f"--add-trials: the trials in '{path}' trained {last:,} steps; this search trains "
                              f"{base.steps:,}: give the same --steps")
        n = max(len((r.get("finals") or "").split()) for r in done)
        if max(n, 1) != seeds:
            raise ContrlError(f"--add-trials: the trials in '{path}' ran {max(n, 1)} seed(s) each; this search runs "
                              f"{seeds}: give the same --seeds")
    kept = {".".join(filter(None, resolve_key(k, algo))): v for k, v in (fixed or {}).items()}
    tag = Path(path).name
    seen = {t.user_attrs.get("added_from") for t in study.get_trials(deepcopy=False)}
    added, left = 0, []
    for row in rows:
        number, state = row["trial"], row["state"]
        if state not in ("COMPLETE", "PRUNED") or row["value"] in ("", None):
            continue  # failed, interrupted or running: nothing to learn from
        if f"{tag}#{number}" in seen:
            continue
        values = {col: parse_scalar(row[col]) for col in names if row.get(col) not in ("", None)}
        try:
            for key, v in kept.items():
                if key in values and not _same(values[key], v):
                    raise _Misfit(f"it ran with {key}={values[key]}, which this search keeps at {v} (--set)")
            replay = _Replay(optuna, {names[c]: v for c, v in values.items()})
            sample(replay, algo, base, fixed, continuous, narrowed)
        except _Misfit as e:
            left.append(f"trial {number}: {e}")
            continue
        value = float(row["value"])
        last = int(float(row["last_step"])) if row.get("last_step") else 0
        attrs = {"overrides": json.dumps(values), "added_from": f"{tag}#{number}", "last_step": last}
        if state == "COMPLETE":
            attrs["finals"] = [float(x) for x in (row.get("finals") or "").split()] or [value]
        trial = optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), value=value if state == "COMPLETE" else None,
            params=replay.params, distributions=replay.distributions, user_attrs=attrs,
            intermediate_values={} if state == "COMPLETE" else {last: value})
        study.add_trial(trial)
        added += 1
    return added, left


def _space_name(key: str, algo: str) -> str:
    """A --set/--search key as the search spaces name it: the rule's keys bare, others as written."""
    from contrl.config import resolve_key

    rule = ALGOS[algo].rule
    full = ".".join(filter(None, resolve_key(key, algo)))
    return full.split(".", 1)[1] if full.startswith(rule + ".") else full


def _number(text: str):
    """'16' -> 16, '1e-4' -> 0.0001, anything else -> None."""
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            pass
    return None


def narrow(search: dict, algo: str, cfg, fixed: Optional[dict] = None, continuous: bool = False) -> dict:
    """``--search`` specs ({'lr': '1e-4..1e-3', 'n_steps': '5|16|32'}) -> the narrowed space
    ({space name: ('range', low, high, is_int) | ('choices', [...])}). A range keeps the space's
    scale (log where the space searches the key on a log scale); it needs a key whose values are
    numbers. Errors name the key and the keys this search has."""
    from contrl.config import parse_scalar

    rec = _Recorder()
    sample(rec, algo, cfg, fixed, continuous)
    kept = {_space_name(k, algo) for k in (fixed or {})}
    out: dict = {}
    for key, text in search.items():
        try:
            name = _space_name(key, algo)
        except ContrlError as e:
            raise ContrlError(f"--search: {e}") from None
        if name in kept:
            raise ContrlError(f"--search {key} is also fixed with --set; give it in one of the two")
        if name not in rec.asked:
            raise ContrlError(f"--search {key}: not a key this search draws for {algo} on {cfg.env}; searched keys: "
                              f"{', '.join(sorted(rec.asked))}")
        kind, default, log = rec.asked[name]
        text = str(text).strip()
        if ".." in text and "|" not in text:
            low, _, high = text.partition("..")
            low, high = _number(low), _number(high)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default)
            if not numeric:
                raise ContrlError(f"--search {key}={text}: {key} takes choices ({'|'.join(map(str, default))}), "
                                  f"not a range")
            if low is None or high is None or low >= high:
                raise ContrlError(f"--search {key}={text}: a range is LOW..HIGH with numbers, LOW < HIGH "
                                  f"(e.g. {key}=1e-4..1e-3)")
            is_int = all(isinstance(v, int) for v in default) and isinstance(low, int) and isinstance(high, int)
            if log and low <= 0:
                raise ContrlError(f"--search {key}={text}: this key is searched on a log scale; LOW must be > 0")
            out[name] = ("range", low, high, is_int)
        else:
            choices = [c.strip() for c in text.split("|") if c.strip()]
            if not choices:
                raise ContrlError(f"--search {key}='{text}': give LOW..HIGH or choices A|B|C")
            out[name] = ("choices", choices if name == "net.hidden" else
                         [_number(c) if _number(c) is not None else parse_scalar(c) for c in choices])
    return out


def sample(trial, algo: str, cfg, fixed: Optional[dict] = None, continuous: bool = False,
           narrowed: Optional[dict] = None) -> dict:
    """The flat overrides of one trial ({'n_envs': 8, 'ppo.lr': ..., 'net.hidden': [...]}; the
    network's widths and activation only for an MLP, its initial log-std for ``continuous``
    (Box) actions), with ``fixed`` (the user's --set) kept instead of searched and ``narrowed``
    (from ``narrow``, the user's --search) drawn instead of the space's own ranges.
    ``n_steps`` is capped so one round of updates fits in the budget."""
    from contrl.config import resolve_key

    rule = ALGOS[algo].rule
    fixed = {".".join(filter(None, resolve_key(k, algo))): v for k, v in (fixed or {}).items()}
    trial = _Kept(trial, {_space_name(k, algo): v for k, v in fixed.items()}, narrowed)
    run = {**_run(trial, cfg), **{k: v for k, v in fixed.items() if "." not in k}}
    envs = run["n_envs"] * (cfg.workers if cfg.runner in ("async", "ray") else 1)
    values = {**SPACES[rule](trial, cfg), **{k.split(".", 1)[1]: v for k, v in fixed.items() if k.startswith(rule + ".")}}
    values["n_steps"] = max(1, min(values["n_steps"], cfg.steps // envs))
    if "batch_size" in values:  # one update's rollout: the Ray runner joins its actors' rollouts
        values["batch_size"] = min(values["batch_size"],
                                   values["n_steps"] * run["n_envs"] * (cfg.workers if cfg.runner == "ray" else 1))
    out = {**run, **{f"{rule}.{k}": v for k, v in values.items()}}
    if cfg.net.type == "mlp":
        net = _net(trial)
        out["net.hidden"] = [int(h) for h in net["hidden"].split(",")]
        out["net.activation"] = net["activation"]
    if continuous:
        out.update(_gaussian(trial))
    out.update({k: v for k, v in fixed.items() if k.startswith("net.")})
    return out


def tune(algo: str, env: str, trials: int, steps: Optional[int] = None, storage: Optional[str] = None,
         timeout: Optional[float] = None, out: Optional[str | Path] = None, net: Optional[str] = None,
         env_kwargs: Optional[dict] = None, seed: int = 0, seeds: int = 1, fixed: Optional[dict] = None,
         search: Optional[dict] = None, add: Optional[list] = None, log: Callable[[str], None] = print) -> dict:
    """``seeds``: runs per trial (seeds seed..seed+seeds-1; the trial's value is the mean of their
    final evaluations, pruning watches the first); ``fixed``: overrides that every trial keeps;
    ``search``: keys searched over the user's range or choices instead of the space's own
    ({'a2c.lr': '1e-4..1e-3', 'n_steps': '5|16|32'}, as ``--search`` gives them); ``add``:
    trials.csv records whose trials join the study before new ones run (``add_trials``)."""
    try:
        import optuna
    except ImportError:
        raise ContrlError('contrl tune needs Optuna: pip install "contrl[tune]" (or pip install optuna)') from None
    from sqlalchemy.exc import SQLAlchemyError  # Optuna's storage raises these unwrapped (Optuna requires SQLAlchemy)
    if algo not in ALGOS:
        raise ContrlError(f"unknown algorithm '{algo}'; available: {', '.join(ALGOS)}")
    if trials < 0 or seeds < 1:
        raise ContrlError(f"--trials must be >= 0 and --seeds >= 1, got {trials}, {seeds}")
    # bad input (and a bad --set) fails here
    base = build_config(algo, env, steps=steps, seed=seed, env_kwargs=env_kwargs, net=net, overrides=fixed)
    import gymnasium as gym

    from contrl.envs.make import env_spaces

    continuous = isinstance(env_spaces(base.env, base.env_kwargs)[1], gym.spaces.Box)
    narrowed = narrow(search or {}, algo, base, fixed, continuous)
    out = Path(out) if out is not None else Path("runs") / f"tune-{algo}-{base.env.split('/')[-1].split(':')[-1]}"
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out / 'study.db'}"
    study_name = f"{algo}-{base.env}"
    # tune logs each trial in one line itself; Optuna's warnings would print a traceback for a
    # trial stopped by Ctrl-C
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        rdb = _storage(optuna, storage)
        study = optuna.create_study(study_name=study_name, storage=rdb, load_if_exists=True, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed + len(_done(optuna, rdb, study_name))),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_min_trials=5,
                                                                       n_warmup_steps=base.steps // 4))
    except (ValueError, ImportError, optuna.exceptions.OptunaError, SQLAlchemyError) as e:
        raise ContrlError(f"cannot open the study in '{storage}' ({_one_line(e)}); give --storage "
                          f"sqlite:///FILE.db") from None
    for path in add or []:
        try:
            n, left = add_trials(optuna, study, Path(path), algo, base, fixed, continuous, narrowed, seeds)
        except SQLAlchemyError as e:
            raise ContrlError(f"the study's storage '{storage}' failed ({_one_line(e)})") from None
        if left and not n:
            raise ContrlError(f"--add-trials: no trial of '{path}' fits this search ({left[0]}); give the --set and "
                              f"--search the record was made with")
        log(f"added {n} trial(s) from {path}" + (f"; {len(left)} left out ({left[0]}"
                                                  f"{'; ...' if len(left) > 1 else ''})" if left else ""))
    from contrl.api import train
    from contrl.errors import Interrupted

    mine: list[int] = []  # this call's trials (a second copy of the command may add its own to the study)

    def objective(trial) -> float:
        mine.append(trial.number)
        flat = sample(trial, algo, base, fixed, continuous, narrowed)
        trial.set_user_attr("overrides", json.dumps(flat))

        def hook(step: int, mean: float) -> None:
            trial.report(mean, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step:,} (eval {mean:.1f})")

        finals = []
        for k in range(seeds):
            run = out / f"trial-{trial.number:04d}" / f"s{seed + k}" if seeds > 1 else out / f"trial-{trial.number:04d}"
            try:
                agent = train(algo, env, steps=base.steps, seed=seed + k, env_kwargs=env_kwargs, net=net,
                              overrides={**flat, **TRIAL_KEYS}, out=run, force=True, quiet=True, tensorboard=False,
                              eval_hook=hook if k == 0 else None)
            except Interrupted:
                raise KeyboardInterrupt from None
            except ContrlError as e:  # values that do not fit together, or a run that failed (a NaN from too
                # high a learning rate): recorded as pruned, with the reason
                log(f"  trial {trial.number}: {'failed' if isinstance(e, Fault) else 'not run'} ({e})")
                raise optuna.TrialPruned(str(e)) from None
            finals.append(agent.summary["final_eval"]["mean"])
        trial.set_user_attr("finals", finals)
        value = sum(finals) / len(finals)
        log(f"  trial {trial.number}: {value:.2f}" + (f" ({', '.join(f'{f:.1f}' for f in finals)})" if seeds > 1 else ""))
        return value

    interrupted = False
    try:
        study.optimize(objective, n_trials=trials, timeout=timeout,
                       callbacks=[lambda s, t: t.state.name == "PRUNED" and log(f"  trial {t.number}: pruned")])
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the trial under way is lost, the completed ones are written
        interrupted = True
    except SQLAlchemyError as e:  # the storage failed mid-study (a full disk, a lock held past 60 s)
        raise ContrlError(f"the study's storage '{storage}' failed ({_one_line(e)}); the completed "
                          f"trials are kept in it: free the disk or stop the other writer, then run the same "
                          f"command to continue the study") from None
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        if interrupted:
            raise KeyboardInterrupt
        raise ContrlError(f"no trial of study '{study_name}' has completed yet; run more trials")
    best = study.best_trial
    preset = _preset(base, json.loads(best.user_attrs["overrides"]))
    finals = best.user_attrs.get("finals", [])
    header = (f"# contrl tune {algo} on {base.env}: best of {len(done)} completed trial(s) "
              f"(trial {best.number}, final eval {best.value:.2f} at {base.steps:,} steps"
              f"{f', mean of {len(finals)} seeds' if len(finals) > 1 else ''})\n")
    if search:
        header += f"# searched with --search {' '.join(f'{k}={v}' for k, v in search.items())}\n"
    if fixed:
        header += f"# kept with --set {' '.join(f'{k}={v}' for k, v in fixed.items())}\n"
    (out / "best.yaml").write_text(header + yaml.safe_dump(preset, sort_keys=False))
    _plot(study, out / "study.png", f"{algo} on {base.env}")
    _trials_csv(study, out / "trials.csv")
    log(f"study '{study_name}' in {storage}: {len(mine)} new trial(s), {len(study.trials)} in all "
        f"({len(done)} completed); best {best.value:.2f} (trial {best.number}) -> {out / 'best.yaml'}, "
        f"{out / 'study.png'}, {out / 'trials.csv'}")
    if interrupted:
        log("interrupted: the trial under way is lost; the same command continues the study")
        raise KeyboardInterrupt
    return {"best_value": best.value, "best_trial": best.number, "trials": len(study.trials),
            "preset": str(out / "best.yaml"), "study": study_name, "storage": storage}


def _trials_csv(study, path: Path) -> None:
    """Every trial: state, value (final evaluation, or the last one reported before pruning), each
    seed's final, the step it got to, and its values -- the search's record."""
    import csv

    keys = sorted({k for t in study.trials for k in json.loads(t.user_attrs.get("overrides", "{}"))})
    added = any("added_from" in t.user_attrs for t in study.trials)  # a "from" column: the record's file#trial
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "value", "finals", "last_step", *(["from"] if added else []), *keys])
        for t in study.trials:
            values = json.loads(t.user_attrs.get("overrides", "{}"))
            last = max(t.intermediate_values) if t.intermediate_values else t.user_attrs.get("last_step", "")
            value = t.value if t.value is not None else t.intermediate_values.get(last, "") if last != "" else ""
            finals = " ".join(f"{x:.1f}" for x in t.user_attrs.get("finals", []))
            w.writerow([t.number, t.state.name, value, finals, last,
                        *([t.user_attrs.get("added_from", "")] if added else []), *[values.get(k, "") for k in keys]])


def _one_line(e: Exception) -> str:
    """An error in one line (SQLAlchemy's text runs on with the statement and a link)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _storage(optuna, url: str, attempts: int = 6):
    """Optuna's RDB storage at ``url``. Two copies of one tune command started together both create
    the schema of a new SQLite file, and the loser fails on the schema-version row (IntegrityError)
    or a lock (OperationalError); once the winner is done the tables exist, so try again. SQLite
    connections wait up to 60 s for a lock held by the other copy (SQLite's default is 5 s)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError):
            time.sleep(0.25 * (attempt + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _done(optuna, storage, name: str) -> list:
    """Trials already in the study (so a continued study's sampler does not repeat the first draws)."""
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except (KeyError, ValueError, optuna.exceptions.OptunaError):
        return []


def _preset(base, flat: dict) -> dict:
    """A preset YAML mapping: the env, its kwargs, steps, the tuned run keys, then the tuned keys by
    section (the search's own eval keys stay out)."""
    preset: dict = {"env": base.env}
    if base.env_kwargs:
        preset["env_kwargs"] = dict(base.env_kwargs)
    preset["steps"] = base.steps
    for key, value in flat.items():
        sec, dot, name = key.partition(".")
        if not dot:
            if key not in TRIAL_KEYS:
                preset[key] = value
        else:
            preset.setdefault(sec, {})[name] = value
    return preset


def _plot(study, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [(t.number, t.value) for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in study.trials
              if t.state.name == "PRUNED" and t.intermediate_values]
    if done:
        ax.scatter(*zip(*done), label="completed (final eval)")
        best, line = -float("inf"), []
        for n, v in sorted(done):
            best = max(best, v)
            line.append((n, best))
        ax.step(*zip(*line), where="post", label="best so far", color="black")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="grey", label="pruned (last eval)")
    ax.set_xlabel("trial")
    ax.set_ylabel("return")
    ax.set_title(f"contrl tune: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
