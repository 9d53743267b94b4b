"""Typed run configuration: dataclasses, YAML presets, ``--set key=value`` overrides, validation.

``ALGOS`` says what each algorithm name stands for (its update rule, the runners it runs on, its
Ray patterns and its own run defaults). A run is one :class:`Config`. Its algorithm's
hyper-parameters live in one dataclass per update rule (``ppo: PPOConfig``) and the network's in
``net: NetConfig``; each validates its own keys, ``validate`` the run's. Values are merged in this
order: dataclass defaults < preset YAML < explicit arguments (``--steps``, ``--seed``, ...) <
``--set`` overrides. The merged result is printed at start and saved as ``config.json`` in the
run folder, so every value a run used can be found in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from contrl.errors import ContrlError

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Algo:
    """What an algorithm name stands for: an update rule on a runner."""

    rule: str  # the update rule, and the config section it reads
    runners: tuple[str, ...]  # the runners it runs on; the first is its default
    ray_patterns: tuple[str, ...] = ("sync",)  # on the Ray runner; the first is its default
    defaults: dict = field(default_factory=dict)  # run keys that differ for it (applied before the preset)


# A3C is A2C's rule on the asynchronous runner, not a second copy of it (a2c there is a3c); on
# Ray, a3c sends gradients and the others run the synchronous pattern (acer can do both)
ALGOS = {
    "ppo": Algo("ppo", ("sync", "ray")),
    "a2c": Algo("a2c", ("sync", "ray")),
    "a3c": Algo("a2c", ("async", "ray"), ("async",), {"n_envs": 1}),
    "acer": Algo("acer", ("sync", "async", "ray"), ("sync", "async")),
}
# the run keys that only some runners read
RUNNER_KEYS = {"async": ("workers", "max_restarts"),
               "ray": ("workers", "max_restarts", "ray_address", "ray_cpus", "ray_pattern", "ray_segments")}


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ContrlError(msg)


@dataclass
class NetConfig:
    """The network: a torso and heads chosen from the spaces.

    ``type: mlp`` -- an MLP torso (or two: actor and critic). ``type: lstm`` -- an encoder MLP
    (``hidden``, may be empty) -> LSTM -> per-head MLP (``post_hidden``) -> heads; the critic
    shares the encoder and LSTM unless ``critic_lstm`` gives it its own.
    """

    type: str = "mlp"  # mlp | lstm (the --net option)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp: torso widths; lstm: encoder widths
    activation: str = "tanh"  # tanh | relu
    shared: bool = False  # mlp: one torso for policy and value (the chapter's net) or two
    ortho_init: bool = True  # orthogonal init; policy head gain 0.01, value head gain 1
    log_std_init: float = 0.0  # initial log-std of the Gaussian policy (Box actions)
    lstm_hidden: int = 64  # lstm: hidden size
    lstm_layers: int = 1  # lstm: stacked layers
    critic_lstm: bool = False  # lstm: a separate encoder + LSTM for the critic
    post_hidden: list[int] = field(default_factory=list)  # lstm: MLP widths after the LSTM, per head
    seq_len: int = 0  # lstm: training sequence length (truncated BPTT); 0: min(n_steps, batch_size)

    def validate(self) -> None:
        _need(self.type in NET_TYPES, f"net.type must be mlp or lstm, got '{self.type}'; use --net mlp or --net lstm")
        _need(all(h >= 1 for h in self.hidden + self.post_hidden),
              f"net.hidden and net.post_hidden must be lists of positive widths, got {self.hidden}, {self.post_hidden}")
        _need(self.activation in ("tanh", "relu"), f"net.activation must be tanh or relu, got '{self.activation}'")
        if self.type == "mlp":
            _need(len(self.hidden) >= 1, f"net.hidden must be a non-empty list of widths for an MLP, got {self.hidden}")
            changed = [k for k in LSTM_KEYS if getattr(self, k) != getattr(NetConfig(), k)]
            _need(not changed,
                  f"net.{changed[0] if changed else ''} applies to LSTM networks; add --net lstm or drop it")
        else:
            _need(self.lstm_hidden >= 1, f"net.lstm_hidden must be >= 1, got {self.lstm_hidden}")
            _need(self.lstm_layers >= 1, f"net.lstm_layers must be >= 1, got {self.lstm_layers}")
            _need(self.seq_len >= 0, f"net.seq_len must be >= 0 (0: automatic), got {self.seq_len}")


# the NetConfig keys that only mean something for an LSTM network
LSTM_KEYS = ("lstm_hidden", "lstm_layers", "critic_lstm", "post_hidden", "seq_len")
NET_TYPES = ("mlp", "lstm")


def _check_common(p) -> None:
    """The keys every update rule has."""
    _need(p.lr > 0, f"lr must be > 0, got {p.lr}; use e.g. --set lr=3e-4")
    _need(0 < p.gamma <= 1, f"gamma must be in (0, 1], got {p.gamma}; use e.g. --set gamma=0.99")
    _need(p.n_steps >= 1, f"n_steps must be >= 1, got {p.n_steps}")
    _need(p.ent_coef >= 0, f"ent_coef must be >= 0, got {p.ent_coef}")
    _need(p.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0: off), got {p.max_grad_norm}")


def _check_optimizer(p) -> None:
    """The keys of the optimisers in algos/optim.py (a2c, acer)."""
    _need(p.optimizer in ("rmsprop", "rmsprop_torch", "adam"),
          f"optimizer must be rmsprop, rmsprop_torch or adam, got '{p.optimizer}'")
    _need(0 <= p.alpha < 1, f"alpha (RMSprop decay) must be in [0, 1), got {p.alpha}")
    _need(p.eps > 0, f"eps must be > 0, got {p.eps}")


@dataclass
class PPOConfig:
    """PPO (Schulman et al. 2017). Names follow Stable-Baselines3 where they exist."""

    lr: float = 3e-4  # Adam learning rate
    anneal_lr: bool = False  # linear decay of lr to 0 over the run
    n_steps: int = 128  # rollout length T per environment
    batch_size: int = 256  # minibatch size (samples)
    n_epochs: int = 10  # passes over each rollout
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # surrogate clip epsilon
    clip_range_vf: Optional[float] = None  # value clipping around old values (None: off)
    normalize_advantage: bool = True  # per-minibatch advantage normalisation
    ent_coef: float = 0.0  # entropy bonus coefficient
    vf_coef: float = 0.5  # value loss coefficient: loss += vf_coef * MSE(V, returns), as SB3
    max_grad_norm: float = 0.5  # gradient-norm clipping (0: off)
    target_kl: Optional[float] = None  # stop the epochs early past this approx KL (None: off)
    adam_eps: float = 1e-5

    def validate(self, rollout: int, what: str, net: NetConfig, seq_len: int) -> None:
        """``rollout``: the samples of one update (``what``: how they are counted)."""
        _check_common(self)
        _need(0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        _need(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        _need(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}; use e.g. --set clip_range=0.2")
        _need(self.clip_range_vf is None or self.clip_range_vf > 0,
              f"clip_range_vf must be > 0 or none, got {self.clip_range_vf}")
        _need(self.n_epochs >= 1, f"n_epochs must be >= 1, got {self.n_epochs}")
        _need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _need(self.batch_size <= rollout, f"batch_size {self.batch_size} is larger than the rollout {what} = "
                                          f"{rollout}; lower batch_size or raise n_steps/n_envs")
        _need(seq_len <= self.batch_size,
              f"net.seq_len {seq_len} is longer than batch_size {self.batch_size}, so a minibatch could not hold "
              f"one sequence; lower net.seq_len or raise batch_size")
        _need(self.target_kl is None or self.target_kl > 0, f"target_kl must be > 0 or none, got {self.target_kl}")
        _need(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")


@dataclass
class A2CConfig:
    """Advantage actor-critic (Mnih et al. 2016): one gradient step per n-step segment.

    Used by ``a2c`` (synchronous runner) and ``a3c`` (asynchronous Hogwild runner).
    Names and defaults follow Stable-Baselines3's A2C.
    """

    lr: float = 7e-4  # learning rate
    anneal_lr: bool = False  # linear decay of lr to 0 over the run
    n_steps: int = 5  # segment length per env between updates (the chapter's update interval)
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # GAE lambda; 1.0 gives plain n-step returns
    ent_coef: float = 0.0  # entropy bonus coefficient
    vf_coef: float = 0.5  # value loss coefficient: loss += vf_coef * MSE(V, returns), as SB3
    max_grad_norm: float = 0.5  # gradient-norm clipping (0: off)
    normalize_advantage: bool = False  # normalise advantages over each update's batch
    optimizer: str = "rmsprop"  # rmsprop (TensorFlow's: eps inside the sqrt) | rmsprop_torch (torch's, SB3's) | adam
    alpha: float = 0.99  # RMSprop decay of the squared-gradient average
    eps: float = 1e-5  # RMSprop / Adam epsilon

    def validate(self, rollout: int, what: str, net: NetConfig, seq_len: int) -> None:
        _check_common(self)
        _need(0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        _need(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        _check_optimizer(self)


@dataclass
class ACERConfig:
    """ACER (Wang et al. 2016): Retrace, truncated importance sampling with bias correction, an
    average policy network and a trust region, experience replay. Names follow OpenAI Baselines'
    ACER where they exist; defaults are the paper's / Baselines' Atari values."""

    lr: float = 7e-4  # learning rate
    anneal_lr: bool = False  # linear decay of lr to 0 over the run
    n_steps: int = 20  # segment length k per env (one on-policy update per segment)
    gamma: float = 0.99  # discount
    ent_coef: float = 0.01  # entropy bonus coefficient
    q_coef: float = 0.5  # critic loss coefficient: loss += q_coef * MSE(Q(s, a), Q_ret)
    max_grad_norm: float = 10.0  # gradient-norm clipping (0: off)
    c: float = 10.0  # importance-weight truncation: min(c, rho) in the policy gradient
    replay_ratio: float = 4.0  # mean of the Poisson number of replayed updates per new segment (0: on-policy)
    buffer_size: int = 50_000  # replay capacity in transitions (rounded down to whole segments)
    replay_start: int = 10_000  # transitions stored before replay starts
    trust_region: bool = True  # the average policy network and the trust-region projection
    delta: float = 1.0  # trust-region bound on the linearised KL(avg || pi) per sample
    trust_region_on: str = "probs"  # discrete: the statistics projected, probs (the paper) | logits
    avg_decay: float = 0.99  # Polyak decay of the average policy network (the paper's alpha)
    sdn_samples: int = 5  # continuous: actions u_i ~ pi in the SDN's mean_i A(s, u_i)
    q_opc: Optional[bool] = None  # Q_opc (Retrace with c = 1) in the policy gradient; None: continuous only
    optimizer: str = "rmsprop"  # rmsprop (TensorFlow's: eps inside the sqrt) | rmsprop_torch (torch's, SB3's) | adam
    alpha: float = 0.99  # RMSprop decay of the squared-gradient average
    eps: float = 1e-5  # RMSprop / Adam epsilon

    def validate(self, rollout: int, what: str, net: NetConfig, seq_len: int) -> None:
        _check_common(self)
        _need(net.seq_len == 0, f"net.seq_len applies to ppo and a2c; acer replays whole segments of n_steps "
                                f"(use --set n_steps={net.seq_len})")
        _need(self.q_coef >= 0, f"q_coef must be >= 0, got {self.q_coef}")
        _need(self.c > 0, f"c (importance-weight truncation) must be > 0, got {self.c}; use e.g. --set c=10")
        _need(self.replay_ratio >= 0, f"replay_ratio must be >= 0 (0: on-policy only), got {self.replay_ratio}")
        _need(self.delta > 0, f"delta (trust region) must be > 0, got {self.delta}; use e.g. --set delta=1")
        _need(self.trust_region_on in ("probs", "logits"),
              f"trust_region_on must be probs or logits, got '{self.trust_region_on}'")
        _need(0 <= self.avg_decay < 1, f"avg_decay must be in [0, 1), got {self.avg_decay}")
        _need(self.sdn_samples >= 1, f"sdn_samples must be >= 1, got {self.sdn_samples}")
        _check_optimizer(self)
        if self.replay_ratio > 0:
            _need(self.buffer_size >= rollout, f"buffer_size {self.buffer_size} cannot hold one segment of {what} = "
                                               f"{rollout} transitions; raise --buffer-size")
            _need(0 <= self.replay_start <= self.buffer_size,
                  f"replay_start {self.replay_start} must be between 0 and buffer_size {self.buffer_size}, or replay "
                  f"never starts; lower replay_start")


@dataclass
class Config:
    """One training run."""

    algo: str = "ppo"
    runner: str = ""  # sync | async | ray (--runner); empty: the algorithm's own (a3c async, the others sync)
    env: str = "LunarLander-v3"  # Gymnasium id, or package.module:ClassName
    env_kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make
    steps: int = 1_000_000  # total environment steps (all envs)
    seed: int = 0
    n_envs: int = 8  # environments stepped in lock-step
    vec: str = "auto"  # inprocess | subprocess | auto (subprocess when an env step is slow)
    norm_obs: bool = False  # running mean/std observation normalisation (saved, used at eval)
    norm_reward: bool = False  # scale rewards by the std of the discounted return
    clip_obs: float = 10.0  # clip normalised observations to +-clip_obs
    eval_every: int = 0  # evaluate every N steps (0: 10 times per run)
    eval_episodes: int = 10  # episodes per periodic evaluation
    final_eval_episodes: int = 20  # episodes of the final evaluation
    eval_deterministic: bool = True  # evaluations act with the mode; false: they sample (e.g. an LSTM on a masked task)
    checkpoint_every: int = 0  # save latest.pt every N steps (0: at each evaluation)
    log_every: int = 0  # a progress.csv row every N steps (0: per update, >= 1,000 steps; a3c: ~1 s)
    power_watts: float = 0.0  # watts per busy core for the energy estimate (CPU-s x W; 0: off)
    # a non-finite observation, reward, action, loss or gradient: stop (the last good checkpoints
    # kept) | skip_update (drop that update, count it; stop after max_skipped in a row)
    nan_policy: str = "stop"
    max_skipped: int = 10  # nan_policy skip_update: skipped updates in a row before the run stops
    threads: int = 1  # torch intra-op threads (tiny nets are fastest on one); per worker for a3c
    workers: int = 2  # async/ray runners: worker processes or Ray actors, each stepping n_envs envs
    max_restarts: int = 3  # async/ray runners: restarts of a dead worker before the run stops with an error
    ray_address: str = ""  # ray runner: auto | HOST:PORT joins a cluster; empty: a local Ray for the run
    ray_cpus: float = 1.0  # ray runner: CPUs reserved per actor (its torch threads: the whole part, >= 1)
    # ray runner: sync (actors return rollouts) | async (actors return gradients); empty: a3c async, the others sync
    ray_pattern: str = ""
    # ray runner: segments an actor answers one request with (rollouts, or gradients), all computed
    # with that request's weights: fewer round trips, at the price of policy lag (docs/ray.md)
    ray_segments: int = 1
    preset: str = ""  # preset the values came from (informational)
    net: NetConfig = field(default_factory=NetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    a2c: A2CConfig = field(default_factory=A2CConfig)
    acer: ACERConfig = field(default_factory=ACERConfig)

    @property
    def rule(self) -> str:
        return ALGOS[self.algo].rule

    def __post_init__(self):
        if not self.runner:
            self.runner = ALGOS[self.algo].runners[0]

    def algo_config(self):
        return getattr(self, self.rule)

    @property
    def ray_async(self) -> bool:
        """On the Ray runner, the asynchronous pattern (gradient workers: a3c, acer with ray_pattern=async)."""
        return self.runner == "ray" and (self.ray_pattern or ALGOS[self.algo].ray_patterns[0]) == "async"

    @property
    def seq_len(self) -> int:
        """LSTM training sequence length in force (0 for an MLP)."""
        if self.net.type != "lstm":
            return 0
        if self.net.seq_len:
            return self.net.seq_len
        p = self.algo_config()
        return min(p.n_steps, p.batch_size) if self.rule == "ppo" else p.n_steps

    def to_dict(self) -> dict:
        """The run's values: run keys, net, and the section of its own update rule only."""
        d = dataclasses.asdict(self)
        for sec in RULE_SECTIONS:
            if sec != self.rule:
                d.pop(sec)
        for key in set(RUNNER_KEYS["ray"]) - set(RUNNER_KEYS.get(self.runner, ())):
            d.pop(key)
        if self.net.type != "lstm":
            for key in LSTM_KEYS:
                d["net"].pop(key)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


RULE_SECTIONS = {"ppo": PPOConfig, "a2c": A2CConfig, "acer": ACERConfig}
SECTIONS = {"net": NetConfig, **RULE_SECTIONS}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a YAML/CLI value into the field's type, or raise a one-line error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    bad = ContrlError(
        f"'{key}' expects {getattr(hint, '__name__', str(hint))}, got {value!r}; "
        f"fix the value (e.g. --set {key}=...)"
    )
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if hint is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if f != f or f in (float("inf"), float("-inf")) or f != int(f):
            raise bad
        return int(f)
    if hint is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    if origin is list:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(key, v, args[0]) for v in value]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise bad  # pragma: no cover - every field type is handled above


def parse_scalar(text: str) -> Any:
    """Parse a CLI value as YAML (numbers, bools, lists), keeping plain strings as strings."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _all_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def resolve_key(key: str, algo: str) -> tuple[Optional[str], str]:
    """Map 'lr', 'ppo.lr' or 'net.hidden' to (section or None, field). Unknown -> error."""
    top = {f.name for f in dataclasses.fields(Config)} - set(SECTIONS)
    rule = ALGOS[algo].rule if algo in ALGOS else algo
    if "." in key:
        sec, name = key.split(".", 1)
        if sec in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
            if sec in RULE_SECTIONS and sec != rule:
                raise ContrlError(f"'{key}' belongs to the {sec} update rule, but this run is {algo} "
                                  f"(rule {rule}); use {rule}.{name} or drop it")
            return sec, name
    elif key in top:
        return None, key
    else:
        # a bare name: the run's update-rule section first, then the network
        for sec in (rule, "net"):
            if sec in SECTIONS and key in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
                return sec, key
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see 'contrl train --help-keys'"
    raise ContrlError(f"unknown config key '{key}'{hint}")


def apply(cfg: Config, values: dict, source: str) -> None:
    """Apply a (possibly nested) mapping of values onto cfg, coercing and checking keys."""
    if not isinstance(values, dict):
        raise ContrlError(f"{source} must be a mapping of config keys to values")
    for key, value in values.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
        else:
            _set(cfg, key, value)


def _set(cfg: Config, key: str, value: Any) -> None:
    sec, name = resolve_key(key, cfg.algo)
    target = getattr(cfg, sec) if sec else cfg
    hint = _hints(type(target))[name]
    value = _coerce(key, value, hint)
    if key == "algo" and value != cfg.algo:
        raise ContrlError(f"'algo' is the algorithm the run was started with ({cfg.algo}); choose another with "
                          f"contrl train ALGO, not with a key")
    setattr(target, name, value)


def parse_assignments(items: list[str], what: str = "--set", raw: bool = False) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (with ``raw``, the values as written: '1', 'x')."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ContrlError(f"{what} expects key=value, got '{item}'; write e.g. {what} "
                              f"{'lr=1e-4..1e-3' if raw else 'lr=0.001'}")
        k, v = item.split("=", 1)
        if not k:
            raise ContrlError(f"{what} expects key=value, got '{item}'")
        out[k.strip()] = v if raw else parse_scalar(v)
    return out


def list_presets(algo: str) -> list[str]:
    d = PRESET_DIR / algo
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def default_preset(algo: str, env: str, env_kwargs: dict, net: Optional[str] = None) -> Optional[str]:
    """The tuned preset for this env, if contrl ships one (e.g. LunarLander-v3-continuous).

    Velocity-masked ids use their base env's presets; with ``net='lstm'`` a ``NAME-lstm``
    preset is preferred when there is one.
    """
    from contrl.envs.pomdp import base_of

    base, extra = base_of(env)
    name = base + ("-continuous" if {**extra, **env_kwargs}.get("continuous") else "")
    names = list_presets(algo)
    if net == "lstm" and f"{name}-lstm" in names:
        return f"{name}-lstm"
    return name if name in names else None


def with_net(algo: str, preset: str, net: Optional[str]) -> str:
    """``chapter`` -> ``chapter-lstm`` for --net lstm when that preset exists."""
    if net == "lstm" and not preset.endswith((".yaml", ".yml")) and f"{preset}-lstm" in list_presets(algo):
        return f"{preset}-lstm"
    return preset


def load_preset(algo: str, preset: str) -> dict:
    path = Path(preset)
    if preset.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise ContrlError(f"preset file '{preset}' not found; give an existing YAML file")
    else:
        path = PRESET_DIR / algo / f"{preset}.yaml"
        if not path.is_file():
            names = list_presets(algo)
            close = difflib.get_close_matches(preset, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ContrlError(
                f"unknown {algo} preset '{preset}'; {hint}available: {', '.join(names)}"
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ContrlError(f"preset {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ContrlError(f"preset {path} must be a mapping of config keys to values")
    return data


def build_config(
    algo: str,
    env: Optional[str] = None,
    *,
    preset: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    env_kwargs: Optional[dict] = None,
    overrides: Optional[dict] = None,
    net: Optional[str] = None,
    mask_velocity: bool = False,
) -> Config:
    """Merge defaults < preset < explicit arguments < overrides, then validate.

    ``net`` ('mlp' | 'lstm') picks the network type (and an ``-lstm`` preset when one exists);
    ``mask_velocity`` swaps the env for its velocity-masked version (contrl/CartPoleNoVel-v1...).
    """
    if algo not in ALGOS:
        close = difflib.get_close_matches(algo, ALGOS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ContrlError(f"unknown algorithm '{algo}'; {hint}available: {', '.join(ALGOS)}")
    if net is not None and net not in NET_TYPES:
        raise ContrlError(f"unknown network '{net}'; use --net mlp or --net lstm")
    cfg = Config(algo=algo)
    apply(cfg, ALGOS[algo].defaults, f"{algo} defaults")
    env_kwargs = dict(env_kwargs or {})
    if preset is None:
        preset = default_preset(algo, env or cfg.env, env_kwargs, net)
    elif preset:
        preset = with_net(algo, preset, net)
    if preset:
        data = load_preset(algo, preset)
        apply(cfg, data, f"preset '{preset}'")
        cfg.preset = preset
    if env is not None:
        if cfg.env != env:
            cfg.env_kwargs = {}
        cfg.env = env
    cfg.env_kwargs.update(env_kwargs)
    if mask_velocity:
        from contrl.envs.pomdp import masked_id

        cfg.env, cfg.env_kwargs = masked_id(cfg.env, cfg.env_kwargs)
    if net is not None:
        cfg.net.type = net
    if steps is not None:
        cfg.steps = _coerce("steps", steps, int)
    if seed is not None:
        cfg.seed = _coerce("seed", seed, int)
    if overrides:
        apply(cfg, overrides, "--set")
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    algo = data.get("algo", "ppo")
    if algo not in ALGOS:
        raise ContrlError(f"unknown algorithm '{algo}' in the saved config; this contrl offers {', '.join(ALGOS)}")
    cfg = Config(algo=algo)
    if isinstance(data.get("acer"), dict) and "trust_region_on" not in data["acer"]:
        data = {**data, "acer": {**data["acer"], "trust_region_on": "logits"}}  # saved before the key: as it ran
    apply(cfg, {k: v for k, v in data.items() if k != "algo"}, "config.json")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks with one-line errors naming the key and the fix: the run keys here, each
    section's own in its ``validate``."""
    _need(cfg.steps > 0, f"steps must be > 0, got {cfg.steps}; use e.g. --steps 100000")
    _need(cfg.n_envs >= 1, f"n_envs must be >= 1, got {cfg.n_envs}; use e.g. --set n_envs=8")
    _need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    _need(cfg.vec in ("auto", "inprocess", "subprocess"),
          f"vec must be auto, inprocess or subprocess, got '{cfg.vec}'")
    _need(cfg.clip_obs > 0, f"clip_obs must be > 0, got {cfg.clip_obs}")
    _need(cfg.eval_every >= 0, f"eval_every must be >= 0 (0: automatic), got {cfg.eval_every}")
    _need(cfg.eval_episodes >= 1, f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    _need(cfg.final_eval_episodes >= 0, f"final_eval_episodes must be >= 0, got {cfg.final_eval_episodes}")
    _need(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    _need(cfg.log_every >= 0, f"log_every must be >= 0 (0: automatic), got {cfg.log_every}")
    _need(cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}")
    _need(cfg.power_watts >= 0, f"power_watts must be >= 0 (0: no energy estimate), got {cfg.power_watts}; "
                                f"use e.g. --power-watts 15")
    _need(cfg.nan_policy in ("stop", "skip_update"), f"nan_policy must be stop or skip_update, got '{cfg.nan_policy}'")
    _need(cfg.max_skipped >= 1, f"max_skipped must be >= 1, got {cfg.max_skipped}")
    algo = ALGOS[cfg.algo]
    if cfg.runner not in algo.runners:
        hint = " (a2c on asynchronous workers is a3c: contrl train a3c)" if cfg.algo == "a2c" else ""
        raise ContrlError(f"{cfg.algo} runs on the {' or '.join(algo.runners)} runner, got runner '{cfg.runner}'{hint}")
    default = Config(algo=cfg.algo)
    mine = RUNNER_KEYS.get(cfg.runner, ())
    for runner, keys in RUNNER_KEYS.items():
        changed = [k for k in keys if k not in mine and getattr(cfg, k) != getattr(default, k)]
        if changed and runner == "async":
            other = "async" if "async" in algo.runners else "ray"
            raise ContrlError(f"'{changed[0]}' applies to the asynchronous and Ray runners; {cfg.algo} steps n_envs "
                              f"envs in lock-step here: add --runner {other}, or drop it (--set n_envs=N)")
        _need(not changed, f"'{changed[0] if changed else ''}' applies to the Ray runner; add --runner ray or drop it")
    if mine:
        _need(cfg.workers >= 1, f"workers must be >= 1, got {cfg.workers}; use e.g. --workers 2")
        _need(cfg.max_restarts >= 0, f"max_restarts must be >= 0, got {cfg.max_restarts}")
        _need(cfg.vec != "subprocess",
              f"{cfg.algo} workers step their envs in their own process; drop vec=subprocess (use more --workers)")
    if cfg.runner == "ray":
        _need(cfg.ray_cpus > 0, f"ray_cpus must be > 0, got {cfg.ray_cpus}; use e.g. --set ray_cpus=1")
        _need(cfg.ray_pattern in ("",) + algo.ray_patterns,
              f"ray_pattern for {cfg.algo} must be {' or '.join(algo.ray_patterns)}, got '{cfg.ray_pattern}'"
              + (" (a2c with gradient workers is a3c: contrl train a3c --runner ray)" if cfg.algo == "a2c" else ""))
        _need(cfg.ray_segments >= 1,
              f"ray_segments must be >= 1, got {cfg.ray_segments}; use e.g. --set ray_segments=4")
        addr = cfg.ray_address
        _need(addr in ("", "auto") or (":" in addr and addr.rsplit(":", 1)[1].isdigit()),
              f"ray_address must be auto or HOST:PORT (e.g. 10.0.0.5:6379), got '{addr}'")
    cfg.net.validate()
    # one update's samples (the Ray runner's synchronous pattern joins the actors' rollouts), and
    # one round of updates (asynchronous runners: every worker's segment)
    p = cfg.algo_config()
    joined = cfg.runner == "ray" and not cfg.ray_async
    rollout = p.n_steps * cfg.n_envs * (cfg.workers if joined else 1)
    p.validate(rollout, "n_steps*n_envs*workers" if joined else "n_steps*n_envs", cfg.net, cfg.seq_len)
    rounds = rollout * (cfg.workers if cfg.runner == "async" or cfg.ray_async else 1)
    _need(cfg.steps >= rounds, f"steps {cfg.steps} is less than one round of updates (n_steps*n_envs"
                               f"{'*workers' if mine else ''} = {rounds}); raise --steps")


def describe_keys() -> str:
    """All config keys with their defaults, for --help-keys."""
    lines = []
    cfg = Config()
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            continue
        lines.append(f"  {f.name} = {getattr(cfg, f.name)!r}")
    for sec in SECTIONS:
        if sec in RULE_SECTIONS:
            users = [a for a in ALGOS if ALGOS[a].rule == sec]
            lines.append(f"  [{sec}: the update rule of {', '.join(users)}]")
        obj = getattr(cfg, sec)
        for f in dataclasses.fields(obj):
            lines.append(f"  {sec}.{f.name} = {getattr(obj, f.name)!r}")
    return "\n".join(lines)
