"""Configuration and input validation in-process: every bad value, key, env or combination is a
ContrlError whose one message names the problem and the fix (test_cli.py checks that the CLI turns
these into one line and exit 2)."""

import pytest

from contrl.api import train
from contrl.config import build_config, parse_assignments
from contrl.envs.make import make_env
from contrl.errors import ContrlError


@pytest.mark.parametrize("algo,kwargs,words", [
    ("ppo", dict(overrides={"clip_rnage": 0.2}), ["unknown config key", "clip_range"]),
    ("ppo", dict(overrides={"lr": "fast"}), ["'lr' expects float"]),
    ("ppo", dict(overrides={"n_envs": 2.5}), ["'n_envs' expects int"]),
    ("ppo", dict(overrides={"lr": 0}), ["lr must be > 0"]),
    ("ppo", dict(overrides={"clip_range": -1}), ["clip_range must be > 0"]),
    ("ppo", dict(overrides={"gamma": 1.5}), ["gamma must be in (0, 1]"]),
    ("ppo", dict(overrides={"batch_size": 100000}), ["larger than the rollout"]),
    ("ppo", dict(steps=0), ["steps must be > 0"]),
    ("ppo", dict(preset="nope"), ["unknown ppo preset 'nope'"]),
    ("ppo", dict(overrides={"runner": "threads"}), ["ppo runs on the sync or ray runner"]),
    ("ppo", dict(overrides={"net.critic_lstm": True}), ["applies to LSTM networks", "--net lstm"]),
    ("ppo", dict(net="lstm", overrides={"net.seq_len": 512}), ["net.seq_len 512 is longer than batch_size"]),
    ("ppo", dict(net="gru"), ["unknown network 'gru'"]),
    ("ppo", dict(overrides={"power_watts": -5}), ["power_watts must be >= 0"]),
    ("ppo", dict(overrides={"ray_address": "auto"}), ["'ray_address' applies to the Ray runner", "--runner ray"]),
    ("ppo", dict(overrides={"runner": "ray", "ray_pattern": "async"}), ["ray_pattern for ppo must be sync"]),
    ("ppx", {}, ["unknown algorithm 'ppx'", "ppo"]),
    ("a2c", dict(overrides={"clip_range": 0.2}), ["unknown config key 'clip_range'"]),
    ("a2c", dict(overrides={"ppo.lr": 1e-3}), ["belongs to the ppo update rule", "a2c.lr"]),
    ("a2c", dict(overrides={"optimizer": "sgd"}), ["optimizer must be rmsprop, rmsprop_torch or adam"]),
    ("a2c", dict(overrides={"workers": 4}), ["'workers' applies to the asynchronous and Ray runners", "--runner ray"]),
    ("a2c", dict(overrides={"runner": "async"}), ["a2c runs on the sync or ray runner", "contrl train a3c"]),
    ("a3c", dict(overrides={"workers": 0}), ["workers must be >= 1"]),
    ("a3c", dict(overrides={"vec": "subprocess"}), ["drop vec=subprocess"]),
    ("a3c", dict(overrides={"max_restarts": -1}), ["max_restarts must be >= 0"]),
    ("acer", dict(overrides={"buffer_size": 10}), ["buffer_size 10 cannot hold one segment"]),
    ("acer", dict(net="lstm", overrides={"net.seq_len": 8}), ["net.seq_len applies to ppo and a2c", "n_steps=8"]),
    ("acer", dict(overrides={"workers": 3}), ["'workers' applies to the asynchronous and Ray", "--runner async"]),
    ("acer", dict(overrides={"replay_start": 999999}), ["replay_start 999999 must be"]),
    ("acer", dict(overrides={"c": 0}), ["c (importance-weight truncation) must be > 0"]),
    ("acer", dict(overrides={"optimizer": "sgd"}), ["optimizer must be rmsprop, rmsprop_torch or adam"]),
    ("acer", dict(overrides={"gae_lambda": 0.9}), ["unknown config key 'gae_lambda'"]),
    ("acer", dict(overrides={"runner": "async", "workers": 2, "steps": 10}), ["less than one round of updates"]),
])
def test_bad_config_is_one_error_naming_the_fix(algo, kwargs, words):
    with pytest.raises(ContrlError) as e:
        build_config(algo, kwargs.pop("env", "CartPole-v1"), **kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("env,env_kwargs,words", [
    ("LunarLander-v2", {}, ["unknown environment", "LunarLander-v3"]),
    ("nosuchmodule.envs:Thing", {}, ["cannot import module 'nosuchmodule.envs'"]),
    ("CarRacing-v3", {}, ["not supported"]),
    ("Blackjack-v1", {}, ["observation space", "not supported"]),
    ("CartPole-v1", {"bogus": 1}, ["--env-kwargs"]),
])
def test_bad_env_is_one_error(env, env_kwargs, words):
    with pytest.raises(ContrlError) as e:
        make_env(env, env_kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ContrlError, match="expects key=value"):
        parse_assignments(["lr"])
    with pytest.raises(ContrlError, match="--mask-velocity knows"):
        build_config("ppo", "Acrobot-v1", mask_velocity=True)
    with pytest.raises(ContrlError, match="cannot resume"):
        train(resume=tmp_path / "nowhere")


def test_runner_keys_are_kept_only_where_they_apply():
    cfg = build_config("a3c", "CartPole-v1")
    assert cfg.runner == "async" and cfg.n_envs == 1 and "workers" in cfg.to_dict()
    assert "ray_cpus" not in cfg.to_dict() and "ppo" not in cfg.to_dict()
    cfg = build_config("acer", "CartPole-v1", overrides={"runner": "ray", "ray_pattern": "async"})
    assert cfg.ray_async and cfg.to_dict()["ray_pattern"] == "async"
    assert not build_config("ppo", "CartPole-v1", overrides={"runner": "ray"}).ray_async
    assert "workers" not in build_config("ppo", "CartPole-v1").to_dict()


@pytest.mark.parametrize("algo", ["ppo", "a2c", "a3c", "acer"])
def test_every_shipped_preset_builds_and_is_picked_by_its_env_id(algo):
    """Each YAML in contrl/presets/ALGO/ is a valid config, and (except the chapter's) is the one a run
    of its env id picks: NAME-continuous with continuous=true, NAME-lstm with --net lstm."""
    from contrl.config import default_preset, list_presets

    names = list_presets(algo)
    assert "chapter" in names and len(names) >= 4, names
    for name in names:
        cfg = build_config(algo, preset=name)
        if name.startswith("chapter"):
            continue
        net = "lstm" if name.endswith("-lstm") else None
        kwargs = {"continuous": True} if "-continuous" in name else {}
        assert cfg.env == name.removesuffix("-lstm").removesuffix("-continuous"), (name, cfg.env)
        assert default_preset(algo, cfg.env, kwargs, net) == name, name
