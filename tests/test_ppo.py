"""PPO update rule: clipping, target-KL early stop, value clipping, lr annealing."""

import gymnasium as gym
import pytest
import torch

from contrl.algos.ppo import PPO
from contrl.config import NetConfig, PPOConfig
from contrl.nets.actor_critic import ActorCritic
from contrl.storage.rollout import Rollout


def _setup(space=gym.spaces.Discrete(3), **kw):
    torch.manual_seed(0)
    model = ActorCritic(4, space, NetConfig())
    cfg = PPOConfig(n_steps=32, batch_size=32, n_epochs=8, lr=3e-2, **kw)
    ro = Rollout(32, 4, 4, model.act_shape)
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


# -- the hand-written gradients (issue 17) against autograd's ------------------------------------
def _minibatch(space, shared, activation, hidden=(16, 8), n=48, seed=0):
    """A model and a minibatch it did not collect (the weights moved since), so that some
    ratios fall outside the clip range and some values move past clip_range_vf."""
    from contrl.storage.rollout import Batch

    torch.manual_seed(seed)
    model = ActorCritic(5, space, NetConfig(hidden=list(hidden), activation=activation, shared=shared))
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 5, generator=g)
    with torch.no_grad():
        pi, v = model(obs)
        d = model.dist(pi)
        actions = d.sample(g).float() if model.discrete else d.sample(g)
        logp = d.log_prob(actions)
        for p in model.parameters():  # the policy the minibatch is evaluated with differs from the one that acted
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    adv = torch.randn(n, generator=g) * 2 + 0.5
    returns = v + torch.randn(n, generator=g)
    return model, Batch(obs, actions, logp, v.clone(), adv, returns)


def _grads(model, rule, mb, by_hand):
    for p in model.parameters():
        p.grad = None
    if by_hand:
        loss, stats = rule._hand_loss(mb)
    else:
        loss, stats = rule._loss(mb)
        loss.backward()
        loss = loss.item()
    return [loss, *stats], {name: p.grad.clone() for name, p in model.named_parameters()}


SPACES = {"discrete": gym.spaces.Discrete(4), "box": gym.spaces.Box(-1, 1, (3,))}


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("settings", [
    {},
    {"clip_range_vf": 0.1, "normalize_advantage": False, "ent_coef": 0.05},
    {"clip_range": 0.05, "vf_coef": 1.3, "ent_coef": 0.01},
])
def test_hand_gradients_are_autograds(space, shared, activation, settings):
    """The loss, its statistics (policy loss, value loss, entropy, approx KL, clip fraction) and
    every parameter's gradient, by hand (numpy loss, hand-written backward) and by autograd."""
    model, mb = _minibatch(SPACES[space], shared, activation)
    rule = PPO(model, PPOConfig(**settings))
    auto_out, auto = _grads(model, rule, mb, by_hand=False)
    hand_out, hand = _grads(model, rule, mb, by_hand=True)
    # the minibatch exercises both sides of the clip (else the test could not tell the branches apart)
    assert 0.1 < auto_out[5] < 0.9, auto_out[5]
    if rule.cfg.clip_range_vf is not None:
        moved = ((mb.values - model.value(mb.obs).detach()).abs() > rule.cfg.clip_range_vf).float().mean().item()
        assert 0.1 < moved, moved
    assert hand_out == pytest.approx(auto_out, rel=1e-5, abs=1e-6)
    assert set(auto) == set(hand) == {name for name, _ in model.named_parameters()}
    for name in auto:
        torch.testing.assert_close(hand[name], auto[name], rtol=1e-4, atol=1e-6, msg=name)
        assert auto[name].abs().max() > 0, name


def test_hand_backward_trains_as_autograd_does():
    """Whole updates (8 epochs of minibatches, Adam, clipping) by hand and through autograd end
    at the same weights to float32 rounding; the rule takes the hand path for an MLP."""
    results = []
    for by_hand in (True, False):
        model, rule, ro, g = _setup(ent_coef=0.01, clip_range_vf=0.2)
        calls = []
        if by_hand:
            hand = rule._hand_loss
            rule._hand_loss = lambda mb: calls.append(1) or hand(mb)
        else:
            rule.hand_backward = False
        stats = rule.update(ro, g)
        assert len(calls) == (8 * 4 if by_hand else 0)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (s1, w1), (s2, w2) = results
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert s1[key] == pytest.approx(s2[key], rel=1e-3, abs=1e-5), key


def test_hand_path_non_finite_loss_is_one_error_and_no_numpy_warning():
    """Weights blown up (a learning rate far too high): the hand-written path reports the
    overflow through the rule's check (NonFinite, or a skipped update), not as numpy warnings."""
    import warnings

    from contrl.errors import NonFinite

    for policy in ("stop", "skip_update"):
        model, rule, ro, g = _setup(gym.spaces.Box(-1, 1, (2,)))
        rule.nan_policy = policy
        with torch.no_grad():
            model.v_head.weight.fill_(1e30)  # (V - R)^2 overflows float32
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning fails the test
            if policy == "stop":
                with pytest.raises(NonFinite, match="non-finite loss"):
                    rule.update(ro, g)
            else:
                rule.max_skipped = 10_000
                stats = rule.update(ro, g)
                assert stats["skipped_updates"] == 8 * 4 and "policy_loss" not in stats
