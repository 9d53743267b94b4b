"""ACER's math by hand: Retrace targets, truncated importance weights and the bias correction,
the on-policy limit, the trust-region projection (the replay memory and the segment forward:
test_storage.py)."""

import gymnasium as gym
import pytest
import torch

from contrl.algos.acer import ACER, retrace, trust_region
from contrl.config import ACERConfig, NetConfig
from contrl.nets.acer import ACERNet
from contrl.nets.distributions import Categorical, DiagGaussian
from contrl.storage.replay import Segment


def test_retrace_targets_by_hand_on_a_three_step_segment():
    """Three columns of the same 3 steps: no episode end, a termination at t=1, a truncation at
    t=1 (bootstrapping V(final obs) = 5)."""
    g = 0.9
    col = lambda x: torch.tensor(x, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # noqa: E731
    r, q_a, v, c = col([1.0, 2.0, 3.0]), col([0.5, 1.0, 1.5]), col([0.4, 0.8, 1.2]), col([0.5, 1.0, 0.3])
    term = torch.zeros(3, 3, dtype=torch.bool)
    trunc = torch.zeros(3, 3, dtype=torch.bool)
    term[1, 1] = True
    trunc[1, 2] = True
    v_final = torch.zeros(3, 3)
    v_final[1, 2] = 5.0
    out = torch.from_numpy(retrace(r, q_a, v, c, term, trunc, v_final, torch.full((3,), 2.0), g))
    # column 0: Q2 = 3 + .9 * 2 = 4.8; carry = .3 (4.8 - 1.5) + 1.2 = 2.19
    #           Q1 = 2 + .9 * 2.19 = 3.971; carry = 1 (3.971 - 1) + .8 = 3.771; Q0 = 1 + .9 * 3.771
    # column 1: terminated at t=1: Q1 = 2; carry = 1 (2 - 1) + .8 = 1.8; Q0 = 1 + .9 * 1.8
    # column 2: truncated at t=1: Q1 = 2 + .9 * 5 = 6.5; carry = 6.3; Q0 = 1 + .9 * 6.3
    expected = torch.tensor([[4.3939, 2.62, 6.67], [3.971, 2.0, 6.5], [4.8, 4.8, 4.8]])
    assert torch.allclose(out, expected, atol=1e-5)


def _cfg(**kw):
    base = dict(trust_region=False, replay_ratio=0.0, q_coef=0.0, max_grad_norm=0.0, ent_coef=0.0)
    return ACERConfig(**{**base, **kw})


def _policy_grad(model, rule, seg):
    """The gradient of ACER's loss on the policy's own parameters (torso and head)."""
    model.zero_grad()
    loss, _ = rule.loss(seg, torch.Generator().manual_seed(3))
    loss.backward()
    return [p.grad.clone() for p in list(model.body.pi_torso.parameters()) + list(model.body.pi_head.parameters())]


@pytest.mark.parametrize("on", ["probs", "logits"])
def test_truncated_weight_and_bias_correction_by_hand(on):
    """One step that terminates (so Q_ret = r): d loss / d logits must be
    -[min(c, rho_a)(Q_ret - V)(e_a - f) + sum_b [1 - c/rho_b]_+ f_b (Q_b - V)(e_b - f)],
    whether the gradient is first taken in probability space and then through the softmax, or
    with respect to the logits."""
    torch.manual_seed(1)
    model = ACERNet(4, gym.spaces.Discrete(3), NetConfig(ortho_init=False))
    c = 1.5
    rule = ACER(model, _cfg(c=c, trust_region_on=on), 1)
    obs = torch.randn(2, 1, 4)
    mu = torch.tensor([0.7, 0.2, 0.1])
    seg = Segment(obs, torch.zeros(1, 1, 4), torch.tensor([[0.0]]), torch.tensor([[1.3]]),
                  torch.tensor([[True]]), torch.tensor([[False]]), mu.log().view(1, 1, 3))
    with torch.no_grad():
        logits, hv = model.features(obs[0])
        f = torch.softmax(logits, -1)[0]
        q = model.q_values(hv)[0]
    v = (f * q).sum()
    rho = f / mu
    assert rho[2] > c and rho[0] < 1  # both the truncation and the correction are exercised
    e = torch.eye(3)
    g = min(c, float(rho[0])) * (1.3 - v) * (e[0] - f)
    for b in range(3):
        g = g + max(0.0, 1 - c / float(rho[b])) * f[b] * (q[b] - v) * (e[b] - f)
    model.zero_grad()
    loss, stats = rule.loss(seg, torch.Generator())
    loss.backward()
    assert torch.allclose(model.body.pi_head.bias.grad, -g, atol=1e-6)  # d logits / d bias = I
    assert stats["rho"] == pytest.approx(float(rho[0]), rel=1e-5)


def _acted(model, k, B, gen, off_policy=0.0):
    """k + 1 steps of B random observations, the network's sampled actions on the first k, and the
    behaviour policy's parameters ``[k, B, .]``: the network's own, plus N(0, off_policy) noise."""
    obs = torch.randn(k + 1, B, 4, generator=gen)
    with torch.no_grad():
        d = model.dist(model.features(obs[:k].reshape(k * B, 4))[0])
        actions = d.sample(gen)
        mu = d.params()
        if off_policy:
            mu = mu + off_policy * torch.randn(mu.shape, generator=gen)
    return obs, actions.reshape((k, B) + actions.shape[1:]).float(), mu.reshape(k, B, -1)


@pytest.mark.parametrize("discrete", [True, False])
def test_on_policy_acer_gradient_is_the_actor_critic_gradient(discrete):
    """mu = pi: every rho is 1, so min(c, rho) = 1 and the bias correction [1 - c/rho]_+ = 0; the
    policy gradient is then A2C's, (Q_ret - V) grad log pi(a) + the entropy term, with Q_ret the
    Retrace target (c_t = 1)."""
    torch.manual_seed(0)
    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,))
    model = ACERNet(4, space, NetConfig())
    k, B, ent = 5, 3, 0.01
    rule = ACER(model, _cfg(ent_coef=ent), B)
    gen = torch.Generator().manual_seed(0)
    obs, actions, mu = _acted(model, k, B, gen)
    term = torch.zeros(k, B, dtype=torch.bool)
    term[2, 0] = True
    trunc = torch.zeros(k, B, dtype=torch.bool)
    trunc[3, 1] = True
    final = torch.randn(k, B, 4, generator=gen)
    seg = Segment(obs, final, actions, torch.randn(k, B, generator=gen), term, trunc, mu)
    got = _policy_grad(model, rule, seg)

    # the same targets, computed here from the critic's outputs (continuous: the SDN with the
    # same sampled actions u_i, drawn first from the same generator)
    gen = torch.Generator().manual_seed(3)
    n = k * B
    pi, hv = model.features(obs[:k].reshape(n, 4))
    flat_a = actions.reshape((n,) + actions.shape[2:])
    with torch.no_grad():
        _, hv_last = model.features(obs[k])
        pi_last = model.features(obs[k])[0]
        v_last = model.v(pi_last, hv_last)
        pf, hf = model.features(final.reshape(n, 4))
        v_final = model.v(pf, hf).reshape(k, B) * trunc
        if discrete:
            q_a = model.q_values(hv).gather(1, flat_a.long().unsqueeze(1)).squeeze(1)
        else:
            mean, std = pi, model.log_std.exp()
            u = mean + std * torch.randn((rule.cfg.sdn_samples,) + mean.shape, generator=gen)
            q_a = model.v(pi, hv) + model.advantage(hv, flat_a) - model.advantage(hv, u).mean(0)
        values = model.v(pi, hv)
        q_ret = torch.from_numpy(retrace(seg.rewards, q_a.reshape(k, B), values.reshape(k, B), torch.ones(k, B),
                                         term, trunc, v_final, v_last, rule.cfg.gamma).reshape(n))
    dist = model.dist(pi)
    objective = (q_ret - values) * dist.log_prob(flat_a) + ent * dist.entropy()
    model.zero_grad()
    (-objective.mean()).backward()
    want = [p.grad.clone() for p in list(model.body.pi_torso.parameters()) + list(model.body.pi_head.parameters())]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(x.abs().sum() > 0 for x in got)


def test_trust_region_projection_meets_its_linearised_kl_bound():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(200, 6, generator=gen)
    k = torch.randn(200, 6, generator=gen)
    delta = 0.5
    z, scale = trust_region(g, k, delta)
    inside = (k * g).sum(-1) <= delta
    assert inside.any() and (~inside).any()
    assert torch.equal(z[inside], g[inside])  # already within the bound: unchanged
    assert torch.allclose((k * z).sum(-1)[~inside], torch.full(((~inside).sum(),), delta), atol=1e-5)
    assert ((k * z).sum(-1) <= delta + 1e-5).all()
    assert (scale[inside] == 0).all()


def test_discrete_trust_region_on_the_probabilities_by_hand():
    """One terminating step, as Wang et al. and OpenAI Baselines: with f the probabilities,
    g = d objective / d f = min(c, rho_a)(Q_ret - V) e_a / f_a + [1 - c/rho]_+ (Q - V)
    - ent_coef (log f + 1), k = d KL(f_avg || f) / d f = -f_avg / f, z = g - max(0, (k.g - delta)
    / |k|^2) k, and the loss's gradient on the logits is -(J^T z) with J = diag(f) - f f^T."""
    torch.manual_seed(2)
    model = ACERNet(4, gym.spaces.Discrete(3), NetConfig(ortho_init=False))
    c, ent, delta = 1.5, 0.01, 0.05
    rule = ACER(model, _cfg(c=c, ent_coef=ent, trust_region=True, delta=delta), 1)
    with torch.no_grad():  # the average policy away from the current one
        rule.avg.body.pi_head.bias.add_(torch.tensor([0.6, -0.4, 0.1]))
    obs = torch.randn(2, 1, 4)
    mu = torch.tensor([0.6, 0.3, 0.1])
    seg = Segment(obs, torch.zeros(1, 1, 4), torch.tensor([[1.0]]), torch.tensor([[-2.5]]),
                  torch.tensor([[True]]), torch.tensor([[False]]), mu.log().view(1, 1, 3))
    with torch.no_grad():
        logits, hv = model.features(obs[0])
        f = torch.softmax(logits, -1)[0]
        q = model.q_values(hv)[0]
        f_avg = torch.softmax(rule.avg.features(obs[0])[0], -1)[0]
    v = (f * q).sum()
    rho = f / mu
    e = torch.eye(3)
    g = min(c, float(rho[1])) * (-2.5 - v) * e[1] / f[1] + (1 - c / rho).clamp_min(0) * (q - v) - ent * (f.log() + 1)
    k = -f_avg / f
    assert float(k @ g) > delta  # the constraint binds
    z = g - max(0.0, float((k @ g - delta) / (k @ k))) * k
    jac = torch.diag(f) - torch.outer(f, f)
    model.zero_grad()
    loss, stats = rule.loss(seg, torch.Generator())
    loss.backward()
    assert torch.allclose(model.body.pi_head.bias.grad, -(jac @ z), atol=1e-5)
    assert stats["trust_region_active"] == 1.0
    # the logit form projects another vector: a different update
    rule_l = ACER(model, _cfg(c=c, ent_coef=ent, trust_region=True, delta=delta, trust_region_on="logits"), 1)
    rule_l.avg.load_state_dict(rule.avg.state_dict())
    model.zero_grad()
    rule_l.loss(seg, torch.Generator())[0].backward()
    assert not torch.allclose(model.body.pi_head.bias.grad, -(jac @ z), atol=1e-4)


def test_old_acer_runs_resume_with_the_trust_region_they_ran_with():
    from contrl.config import build_config, config_from_dict

    d = build_config("acer", "CartPole-v1").to_dict()
    assert d["acer"]["trust_region_on"] == "probs"
    del d["acer"]["trust_region_on"]  # a config.json written before the key
    assert config_from_dict(d).acer.trust_region_on == "logits"


def test_trust_region_in_the_update_meets_the_bound_per_sample():
    """One continuous step (so the gradient on the policy head's bias and on log-std is -z):
    the unconstrained gradient g breaks k.g <= delta, the update's z meets k.z = delta, with
    k = grad_phi KL(pi_avg || pi) over phi = (mean, log-std)."""
    torch.manual_seed(0)
    model = ACERNet(4, gym.spaces.Box(-1, 1, (2,)), NetConfig())
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 1, 4, generator=gen)
    with torch.no_grad():
        pi, _ = model.features(obs[0])
        mu = model.dist(pi).params().view(1, 1, 4) + 0.3  # off-policy: rho != 1
    seg = Segment(obs, torch.zeros(1, 1, 4), torch.tensor([[[0.4, -0.2]]]), torch.tensor([[2.0]]),
                  torch.tensor([[True]]), torch.tensor([[False]]), mu)

    def z_of(rule):
        model.zero_grad()
        loss, _ = rule.loss(seg, torch.Generator().manual_seed(5))
        loss.backward()
        return -torch.cat([model.body.pi_head.bias.grad, model.log_std.grad])

    delta = 0.01
    rules = {}
    for d in (delta, 1e9):
        rules[d] = ACER(model, _cfg(trust_region=True, delta=d, ent_coef=0.01), 1)
        with torch.no_grad():  # move the average policy away so KL(avg || pi) has a gradient
            rules[d].avg.body.pi_head.bias.add_(torch.tensor([0.5, -0.3]))
            rules[d].avg.body.log_std.add_(0.2)
    g, z = z_of(rules[1e9]), z_of(rules[delta])
    avg = rules[delta].avg
    with torch.no_grad():
        avg_dist = DiagGaussian(avg.features(obs[0])[0], avg.log_std)
    phi = [pi.clone().requires_grad_(), model.log_std.detach().view(1, 2).clone().requires_grad_()]
    kgrad = torch.cat([x.view(-1) for x in torch.autograd.grad(avg_dist.kl(DiagGaussian(*phi)).sum(), phi)])
    assert float(kgrad @ g) > delta  # the constraint binds ...
    assert float(kgrad @ z) == pytest.approx(delta, abs=1e-4)  # ... and the update meets it
    assert not torch.allclose(z, g)


def test_behaviour_policy_parameters_round_trip():
    logits = torch.randn(5, 3)
    c = Categorical(logits)
    assert torch.allclose(Categorical.from_params(c.params()).logits, c.logits)
    g = DiagGaussian(torch.randn(5, 2), torch.randn(2))
    g2 = DiagGaussian.from_params(g.params())
    a = torch.randn(5, 2)
    assert torch.allclose(g2.log_prob(a), g.log_prob(a))


def test_replay_keeps_raw_inputs_and_learns_with_the_statistics_of_now():
    """With norm_obs and norm_reward an ACER rollout (what the memory stores) holds the raw
    observations and rewards; the loss normalises them with the statistics in force when it
    runs: the same loss as on a segment normalised by hand with those statistics."""
    from contrl.agent import Agent, build_model
    from contrl.algos import make_rule
    from contrl.config import build_config
    from contrl.envs.normalize import ObsNormalizer, ReplayInputs, RewardScaler
    from contrl.envs.vec import VecEnv
    from contrl.runners.collect import collect

    cfg = build_config("acer", "CartPole-v1", overrides={"n_envs": 2, "norm_obs": True, "norm_reward": True,
                                                          "acer.n_steps": 30})
    venv = VecEnv(cfg.env, {}, [0, 1])
    model = build_model(cfg, venv.observation_space, venv.action_space)
    agent = Agent(cfg, model, venv.observation_space, venv.action_space, ObsNormalizer(4, cfg.clip_obs))
    rule = make_rule(cfg, model, 2)
    scaler = RewardScaler(2, cfg.acer.gamma)
    rule.inputs = ReplayInputs(agent.obs_norm, scaler)
    rollout = rule.new_rollout(2)
    first = venv.obs.copy()
    collect(agent, venv, rollout, torch.Generator().manual_seed(0), scaler)
    assert torch.equal(rollout.obs[0], torch.as_tensor(first, dtype=torch.float32))  # raw, not normalised
    assert torch.equal(rollout.rewards, torch.ones(30, 2))  # CartPole's raw rewards, not scaled
    assert torch.equal(rollout.obs_last, torch.as_tensor(venv.obs, dtype=torch.float32))
    assert float(scaler.rms.var) != 1.0  # the scaler still learned the return statistics
    seg = Segment.from_rollout(rollout)
    by_hand = Segment(**{**seg.__dict__, "obs": torch.from_numpy(agent.obs_norm(seg.obs.reshape(-1, 4).numpy()))
                         .reshape(seg.obs.shape),
                         "final_obs": torch.from_numpy(agent.obs_norm(seg.final_obs.reshape(-1, 4).numpy()))
                         .reshape(seg.final_obs.shape),
                         "rewards": (seg.rewards / (float(scaler.rms.var) + 1e-8) ** 0.5).clamp(-10, 10)})
    loss_raw = rule.loss(seg, torch.Generator().manual_seed(1))[0]
    rule.inputs = None
    loss_hand = rule.loss(by_hand, torch.Generator().manual_seed(1))[0]
    assert torch.allclose(loss_raw, loss_hand, atol=1e-6)
    assert not torch.allclose(loss_raw, rule.loss(seg, torch.Generator().manual_seed(1))[0], atol=1e-4)


# -- the hand-written gradient (issue 17) against autograd's --------------------------------------
def _hand_case(space, shared, activation, trust, on="probs", q_opc=None, k=6, B=4):
    """A net, an ACER rule and an off-policy segment with a termination and a truncation."""
    torch.manual_seed(0)
    model = ACERNet(4, space, NetConfig(hidden=[16, 8], activation=activation, shared=shared))
    cfg = ACERConfig(trust_region=trust, delta=0.05, trust_region_on=on, replay_ratio=0.0, c=2.0, q_coef=0.7,
                     ent_coef=0.03, max_grad_norm=0.05, q_opc=q_opc, sdn_samples=3)
    with torch.no_grad():  # a policy far from uniform (the head starts near 0), so every term has a gradient
        model.body.pi_head.weight.mul_(50.0)
    rule = ACER(model, cfg, B)
    if rule.avg is not None:  # an average policy away from the policy, so the KL has a gradient
        with torch.no_grad():
            for p in rule.avg.parameters():
                p.add_(0.1 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    obs, actions, mu = _acted(model, k, B, gen, off_policy=0.5)
    term = torch.zeros(k, B, dtype=torch.bool)
    trunc = torch.zeros(k, B, dtype=torch.bool)
    term[2, 0] = trunc[3, 1] = trunc[k - 1, 2] = True
    seg = Segment(obs, torch.randn(k, B, 4, generator=gen), actions, torch.randn(k, B, generator=gen), term, trunc,
                  mu)
    return model, rule, seg


def _grads_and_stats(rule, seg, hand_path):
    ACER.hand_backward = hand_path
    try:
        stats = rule.gradients(seg, torch.Generator().manual_seed(7))
    finally:
        ACER.hand_backward = True
    return [p.grad.clone() for p in rule.params], stats


CASES = [(gym.spaces.Discrete(3), False, "tanh", True, "probs", None),
         (gym.spaces.Discrete(3), True, "relu", True, "probs", None),
         (gym.spaces.Discrete(3), False, "relu", True, "logits", None),
         (gym.spaces.Discrete(3), True, "tanh", False, "logits", True),
         (gym.spaces.Discrete(3), False, "relu", False, "probs", None),
         (gym.spaces.Box(-1, 1, (2,)), False, "relu", True, "probs", None),
         (gym.spaces.Box(-1, 1, (2,)), True, "tanh", True, "probs", False),
         (gym.spaces.Box(-1, 1, (2,)), False, "tanh", False, "probs", None)]


@pytest.mark.parametrize("space,shared,activation,trust,on,q_opc", CASES)
def test_hand_gradient_is_autograds(space, shared, activation, trust, on, q_opc):
    """ACER's update without autograd (``_hand_loss``) leaves the gradients and statistics of
    ``loss().backward()``: categorical (trust region on the probabilities or the logits, or none;
    Q_opc) and Gaussian (the SDN's critic, the bias correction's sampled action), shared and
    separate torsos, ReLU and tanh, off-policy, with episode ends, clipped at 0.05 so the clip acts."""
    model, rule, seg = _hand_case(space, shared, activation, trust, on, q_opc)
    want, want_stats = _grads_and_stats(rule, seg, False)
    got, got_stats = _grads_and_stats(rule, seg, True)
    assert len(got) == len(want) and all(g is not None for g in got)
    for name, g, w in zip([n for n, _ in model.named_parameters()], got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6), name
    for key, w in want_stats.items():
        assert got_stats[key] == pytest.approx(w, rel=1e-4, abs=1e-6), key
    if trust:
        assert 0.0 < want_stats["trust_region_active"] <= 1.0  # the projection acts in these cases
    assert want_stats["rho"] != pytest.approx(1.0)


def test_hand_path_is_taken_by_mlp_nets_only():
    from contrl.algos import hand
    mlp = ACERNet(4, gym.spaces.Discrete(3), NetConfig())
    lstm = ACERNet(4, gym.spaces.Discrete(3), NetConfig(type="lstm", hidden=[]))
    rule = ACER(mlp, ACERConfig(replay_ratio=0.0), 1)
    assert hand.takes_hand_path(rule, mlp) and not hand.takes_hand_path(rule, lstm)
