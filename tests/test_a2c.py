"""A2C rule: the policy gradient by hand, targets computed by the rule, gradients left for an
asynchronous runner without a step."""

import gymnasium as gym
import pytest
import torch

from contrl.algos.a2c import A2C
from contrl.config import A2CConfig, NetConfig
from contrl.nets.actor_critic import ActorCritic
from contrl.storage.rollout import Rollout


def _rollout(model, T=6, N=3, seed=0):
    ro = Rollout(T, N, 4, ())
    gen = torch.Generator().manual_seed(seed)
    ro.obs.normal_(generator=gen)
    with torch.no_grad():
        pi, v = model(ro.obs)
        ro.actions.copy_(model.dist(pi).sample(gen).float())
        ro.values.copy_(v)
    ro.rewards.normal_(generator=gen)
    ro.last_values.normal_(generator=gen)
    return ro


def test_a2c_gradient_is_the_policy_gradient_plus_value_and_entropy_terms():
    torch.manual_seed(0)
    model = ActorCritic(4, gym.spaces.Discrete(3), NetConfig())
    cfg = A2CConfig(ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.0, lr=0.0)
    rule = A2C(model, cfg)
    ro = _rollout(model)
    rule.update(ro)  # computes its own n-step targets (gae_lambda 1), bootstrapping from last_values
    got = [p.grad.clone() for p in model.parameters()]
    expected = torch.zeros(6, 3)
    g = ro.last_values.clone()
    for t in range(5, -1, -1):
        g = ro.rewards[t] + 0.99 * g
        expected[t] = g
    assert torch.allclose(ro.returns, expected, atol=1e-5)

    # by hand: -mean(A log pi(a|s)) + vf * mean((V - R)^2) - ent * mean(H)
    model.zero_grad()
    obs, a = ro.obs.reshape(-1, 4), ro.actions.reshape(-1).long()
    logits, v = model(obs)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(1, a[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    adv, ret = ro.advantages.reshape(-1), ro.returns.reshape(-1)
    loss = -(adv * logp).mean() + 0.5 * ((v - ret) ** 2).mean() - 0.01 * entropy.mean()
    loss.backward()
    for g1, p in zip(got, model.parameters()):
        assert torch.allclose(g1, p.grad, atol=1e-6)


def test_updates_leave_one_gradient_and_step_nothing():
    """What the asynchronous runners take from the rule: the gradient in the model's .grad, the
    parameters untouched until the runner applies it to the shared weights."""
    torch.manual_seed(0)
    model = ActorCritic(4, gym.spaces.Discrete(2), NetConfig())
    rule = A2C(model, A2CConfig(lr=1e-2))
    before = [p.detach().clone() for p in model.parameters()]
    grads = list(rule.updates(_rollout(model), None))
    assert len(grads) == 1 and "explained_variance" in grads[0]
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(p.grad is not None for p in model.parameters())
    rule.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# -- the hand-written gradient (issue 17) against autograd's --------------------------------------
SPACES = {"discrete": gym.spaces.Discrete(4), "box": gym.spaces.Box(-1, 1, (3,))}


def _model_and_rollout(space, shared=False, activation="tanh", T=8, N=4):
    torch.manual_seed(0)
    model = ActorCritic(4, space, NetConfig(hidden=[16, 8], activation=activation, shared=shared))
    ro = Rollout(T, N, 4, model.act_shape)
    gen = torch.Generator().manual_seed(1)
    ro.obs.normal_(generator=gen)
    with torch.no_grad():
        pi, v = model(ro.obs)
        d = model.dist(pi)
        ro.actions.copy_(d.sample(gen).float() if model.discrete else d.sample(gen))
        ro.values.copy_(v)
    ro.rewards.normal_(1.0, 2.0, generator=gen)
    ro.dones.bernoulli_(0.1, generator=gen)
    ro.last_values.normal_(generator=gen)
    return model, ro


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("settings", [{}, {"normalize_advantage": True, "ent_coef": 0.05, "vf_coef": 1.3}])
def test_hand_gradient_is_autograds(space, shared, activation, settings):
    """The statistics (policy loss, value loss, entropy) and every parameter's gradient -- clipped
    at max_grad_norm, which the 0.05 here makes active -- by hand (numpy loss, hand-written
    backward) and through autograd, on the same rollout."""
    out = []
    for by_hand in (True, False):
        model, ro = _model_and_rollout(SPACES[space], shared, activation)
        rule = A2C(model, A2CConfig(max_grad_norm=0.05, **settings))
        rule.hand_backward = by_hand
        calls = []
        hand = rule._hand_loss
        rule._hand_loss = lambda batch: calls.append(1) or hand(batch)
        [stats] = rule.updates(ro, None)
        assert len(calls) == by_hand
        out.append((stats, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (hand_stats, hand_grads), (auto_stats, auto_grads) = out
    assert hand_stats == pytest.approx(auto_stats, rel=1e-5, abs=1e-6)
    assert set(auto_grads) == set(hand_grads) == {name for name, _ in model.named_parameters()}
    for name in auto_grads:
        torch.testing.assert_close(hand_grads[name], auto_grads[name], rtol=1e-4, atol=1e-7, msg=name)
        assert auto_grads[name].abs().max() > 0, name


def test_hand_gradient_trains_as_autograd_does_on_shared_weights():
    """As A3C uses it: gradients computed in a worker's copy, applied by the rule that owns the
    weights (the hand path writes into kept gradient buffers; the owner's ``.grad`` points at
    them), for several rollouts: the same weights as through autograd, to float32 rounding."""
    weights = []
    for by_hand in (True, False):
        owner_model, ro = _model_and_rollout(SPACES["box"])
        owner = A2C(owner_model, A2CConfig(lr=1e-2, ent_coef=0.01, optimizer="adam"))
        local_model, _ = _model_and_rollout(SPACES["box"])
        local = A2C(local_model, A2CConfig(lr=1e-2, ent_coef=0.01, optimizer="adam"))
        local.hand_backward = by_hand
        for _ in range(5):
            with torch.no_grad():
                for p, q in zip(local.params, owner.params):
                    p.copy_(q)
            for stats in local.updates(ro, None):
                for p, q in zip(owner.params, local.params):
                    p.grad = q.grad
                owner.step()
        weights.append([p.detach().clone() for p in owner_model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy", ["stop", "skip_update"])
def test_hand_path_non_finite_loss_is_one_error_and_no_numpy_warning(policy):
    """Weights blown up: the overflow is reported by the rule's check (NonFinite, or a skipped
    update), not as numpy warnings."""
    import warnings

    from contrl.errors import NonFinite

    model, ro = _model_and_rollout(SPACES["box"])
    rule = A2C(model, A2CConfig())
    rule.nan_policy = policy
    with torch.no_grad():
        model.v_head.weight.fill_(1e30)  # (V - R)^2 overflows float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        if policy == "stop":
            with pytest.raises(NonFinite, match="non-finite loss"):
                rule.update(ro)
        else:
            assert rule.update(ro)["skipped_updates"] == 1
