"""PPO update rule: clipping, target-KL early stop, value clipping, lr annealing."""

import gymnasium as gym
import pytest
import torch

from contrl.algos.ppo import PPO
from contrl.config import NetConfig, PPOConfig
from contrl.nets.actor_critic import ActorCritic
from contrl.storage.rollout import Rollout


def _setup(**kw):
    torch.manual_seed(0)
    model = ActorCritic(4, gym.spaces.Discrete(3), NetConfig())
    cfg = PPOConfig(n_steps=32, batch_size=32, n_epochs=8, lr=3e-2, **kw)
    ro = Rollout(32, 4, 4, ())
    g = torch.Generator().manual_seed(0)
    ro.obs.normal_(generator=g)
    with torch.no_grad():
        pi, v = model(ro.obs)
        d = model.dist(pi)
        ro.actions.copy_(d.sample(g).float())
        ro.logp.copy_(d.log_prob(ro.actions))
        ro.values.copy_(v)
    ro.rewards.normal_(5.0, 1.0, generator=g)  # the rule's GAE returns lie far above the values
    return model, PPO(model, cfg), ro, g


def test_target_kl_stops_epochs_early():
    _, rule, ro, g = _setup()
    assert rule.update(ro, g)["epochs_done"] == 8
    _, rule, ro, g = _setup(target_kl=1e-6)
    assert rule.update(ro, g)["epochs_done"] == 1


def test_first_minibatch_has_ratio_one_and_no_clipping():
    _, rule, ro, g = _setup()
    rule.cfg.n_epochs = 1
    rule.cfg.batch_size = 128  # one minibatch: evaluated before any step, ratio == 1
    stats = rule.update(ro, g)
    assert stats["clip_fraction"] == 0.0 and abs(stats["approx_kl"]) < 1e-6


def test_value_clipping_limits_value_change():
    """With clip_range_vf, the value loss has no gradient once V moves past old V +- eps."""
    model, rule, ro, g = _setup(clip_range_vf=0.01, ent_coef=0.0, vf_coef=1.0)
    rule.cfg.n_epochs = 30
    for group in rule.optimizer.param_groups:
        group["lr"] = 1e-3
    before = ro.values.clone()
    rule.update(ro, g)
    with torch.no_grad():
        after = model.value(ro.obs)
    model2, rule2, ro2, g2 = _setup(ent_coef=0.0, vf_coef=1.0)
    rule2.cfg.n_epochs = 30
    for group in rule2.optimizer.param_groups:
        group["lr"] = 1e-3
    rule2.update(ro2, g2)
    with torch.no_grad():
        after2 = model2.value(ro2.obs)
    # the unclipped critic moves towards the returns (far above old V) much further than the clipped one
    moved_clipped, moved_free = (after - before).mean().item(), (after2 - before).mean().item()
    assert moved_free > 3 * moved_clipped, (moved_free, moved_clipped)


def test_linear_lr_annealing():
    _, rule, _, _ = _setup(anneal_lr=True)
    assert rule.set_progress(0.0) == pytest.approx(3e-2)
    assert rule.set_progress(0.75) == pytest.approx(0.75e-2)
    assert rule.optimizer.param_groups[0]["lr"] == pytest.approx(0.75e-2)
    _, rule, _, _ = _setup(anneal_lr=False)
    assert rule.set_progress(0.75) == pytest.approx(3e-2)
