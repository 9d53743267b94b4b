"""A2C rule: the policy gradient by hand, targets computed by the rule, gradients left for an
asynchronous runner without a step."""

import gymnasium as gym
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
