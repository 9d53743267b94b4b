"""The update rules (``ppo``, ``a2c``, ``acer``) and ``make_rule``, the one place a rule is built."""

from __future__ import annotations

from contrl.algos.a2c import A2C
from contrl.algos.acer import ACER
from contrl.algos.ppo import PPO
from contrl.algos.rule import Rule

RULES = {"ppo": PPO, "a2c": A2C, "acer": ACER}


def make_rule(cfg, model, n_envs: int, memory: bool = True) -> Rule:
    """The update rule of run config ``cfg`` on ``model``, for updates on ``n_envs`` envs;
    ``memory=False``: without a replay memory (where workers keep their own)."""
    rule = RULES[cfg.rule](model, cfg.algo_config(), n_envs=n_envs, seq_len=cfg.seq_len, memory=memory)
    rule.nan_policy, rule.max_skipped = cfg.nan_policy, cfg.max_skipped
    return rule
