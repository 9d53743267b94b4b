"""The optimisers A2C/A3C and ACER use: TF-style RMSprop and Adam by hand, and their statistics
really shared between processes (Hogwild)."""

import pytest
import torch
import torch.multiprocessing as mp

from contrl.algos.optim import Adam, RMSpropTF, RMSpropTorch


def test_rmsprop_tf_style_by_hand():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3)
    p.grad = torch.tensor([0.5, 3.0])
    opt.step()
    v = 0.9 * 1.0 + 0.1 * torch.tensor([0.25, 9.0])  # the average starts at 1 (TensorFlow)
    expected = torch.tensor([1.0, -2.0]) - 0.1 * torch.tensor([0.5, 3.0]) / torch.sqrt(v + 1e-3)
    assert torch.allclose(p.detach(), expected, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_rmsprop_torch_matches_torch_rmsprop(shared):
    """optimizer=rmsprop_torch: torch.optim.RMSprop's step (SB3's A2C default), shared or not."""
    torch.manual_seed(0)
    a = torch.randn(5, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours = RMSpropTorch([a], lr=0.01, alpha=0.99, eps=1e-5)
    ref = torch.optim.RMSprop([b], lr=0.01, alpha=0.99, eps=1e-5)
    if shared:
        ours.share_memory()
    for i in range(7):
        g = torch.randn(5, 3) * (1e-4 if i < 3 else 1.0)  # small gradients too, where eps's place matters
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ours.state["square_avg"][0], ref.state[b]["square_avg"], atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_adam_matches_torch_adam(shared):
    """In one process (the fused kernel) and shared (the clipped foreach step, Hogwild's)."""
    torch.manual_seed(0)
    a = torch.randn(5, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours, ref = Adam([a], lr=0.01, eps=1e-8), torch.optim.Adam([b], lr=0.01, eps=1e-8)
    if shared:
        ours.share_memory()
    assert ours.fused is not shared
    for _ in range(7):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)
    assert ours.steps == 7
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.allclose(ours.state[name][0], ref.state[b][name], atol=1e-7)


def test_learning_rate_lives_in_param_groups_as_in_torch():
    p = torch.zeros(2, requires_grad=True)
    opt = RMSpropTF([p], lr=0.1)
    opt.param_groups[0]["lr"] = 0.0
    p.grad = torch.ones(2)
    opt.step()
    assert opt.lr == 0.0 and torch.equal(p.detach(), torch.zeros(2))


@pytest.mark.parametrize("cls", [RMSpropTF, RMSpropTorch, Adam])
def test_shared_optimizer_state_lives_in_shared_memory_and_advances_with_every_worker(cls):
    """Two worker processes, each given the optimiser itself (its parameters and statistics
    travel as shared-memory handles), step the same statistics: the result equals one optimiser
    taking all their steps, and the step count includes every worker's steps."""
    torch.manual_seed(0)
    w = torch.randn(4, 3).share_memory_()
    w0 = w.clone()
    opt = cls([w], lr=0.01).share_memory()
    assert opt.is_shared() and w.is_shared()
    grads = [[torch.randn(4, 3) for _ in range(5)] for _ in range(2)]
    ctx = mp.get_context("spawn")
    for k in range(2):  # one after the other, so the result is exact
        p = ctx.Process(target=_child_steps, args=(opt, grads[k]))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    assert opt.steps == 10
    ref_w = w0.clone()
    ref = cls([ref_w], lr=0.01)
    for g in grads[0] + grads[1]:
        ref_w.grad = g
        ref.step()
    assert torch.allclose(w, ref_w, atol=1e-6)
    for name in cls.state_names:
        assert torch.allclose(opt.state[name][0], ref.state[name][0], atol=1e-6)


def _child_steps(opt, grads):
    for g in grads:
        opt.params[0].grad = g
        opt.step()


@pytest.mark.parametrize("shared", [False, True])
def test_adam_step_bound_is_never_reached_by_consistent_statistics_and_holds_torn_ones(shared):
    """The per-element clip of Adam's step: on the gradient sequence that reaches the
    Cauchy-Schwarz bound (g_{t-k} = (b1 / b2)^k) the step equals torch's Adam; with torn
    statistics (m holding a large gradient that v never saw, as two Hogwild workers stepping at
    once can leave them) the step stays at lr * bound / (1 - b1^t) instead of ~lr * m / eps."""
    b1, b2, t = 0.9, 0.999, 6
    grads = [torch.tensor([(b1 / b2) ** (t - 1 - i)]) for i in range(t)]
    ours_p, ref_p = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    ours, ref = Adam([ours_p], lr=0.1), torch.optim.Adam([ref_p], lr=0.1)
    if shared:
        ours.share_memory()
    for g in grads:
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(ours_p, ref_p, rtol=1e-5, atol=0)
    torn_p = torch.zeros(3, requires_grad=True)
    torn = Adam([torn_p], lr=0.1).share_memory()  # Hogwild's: only shared statistics can be torn
    torn.state["exp_avg"][0].copy_(torch.tensor([50.0, 0.0, -50.0]))  # another worker's gradient in m only
    torn_p.grad = torch.zeros(3)
    torn.step()  # t = 1: v = 0
    bound = torn.ratio_bound(1.0)
    assert bound == pytest.approx(1 - b1, rel=1e-3)  # so that Adam's first step is at most lr
    assert torch.allclose(torn_p, torch.tensor([-0.1, 0.0, 0.1]), rtol=1e-3)  # without the clip: -0.1 * 50 / 1e-8


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((64, 17), (64,), (6, 64), (6,))]


def test_fused_adam_is_torchs_fused_adam_step_for_step():
    """PPO's FusedAdam (the fused kernel called directly): the same parameters and statistics as
    torch.optim.Adam(fused=True), bit for bit, through lr changes, a parameter without a gradient
    (torch's own step then), zero_grad and a state dict round trip into a new optimiser."""
    from contrl.algos.optim import FusedAdam

    ref, mine = _params(), _params()
    opt_ref = torch.optim.Adam(ref, lr=3e-4, eps=1e-5, fused=True)
    opt = FusedAdam(mine, lr=3e-4, eps=1e-5)
    g = torch.Generator().manual_seed(1)
    for i in range(40):
        if i == 25:  # the state goes into a new optimiser (a resumed run), the lr changes (annealing)
            state = opt.state_dict()
            opt = FusedAdam(mine, lr=3e-4, eps=1e-5)
            opt.load_state_dict(state)
        for o in (opt_ref, opt):
            o.param_groups[0]["lr"] = 3e-4 * (1 - i / 40)
            o.zero_grad()
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for k, (a, b, gr) in enumerate(zip(ref, mine, grads)):
            if i == 10 and k == 3:
                continue  # no gradient for one parameter this step
            a.grad, b.grad = gr.clone(), gr.clone()
        opt_ref.step()
        opt.step()
    assert all(b.grad is not None for b in mine) and opt._lists is not None  # the direct path ran
    for a, b in zip(ref, mine):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_ref.state[a][key], opt.state[b][key])
    opt.zero_grad()
    assert all(p.grad is None for p in mine)


def test_clip_grad_norm_is_torchs():
    """The rules' gradient clip: torch's clip_grad_norm_ numbers (norm and clipped gradients), and
    the norm alone with max_norm 0."""
    from torch import nn

    from contrl.algos.rule import clip_grad_norm

    for max_norm, scale in ((0.5, 1.0), (0.5, 1e-3), (0.0, 1.0)):
        ref, mine = _params(2), _params(2)
        for a, b in zip(ref, mine):
            a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(a.numel())) * scale
            b.grad = a.grad.clone()
        if max_norm > 0:
            norm_ref = nn.utils.clip_grad_norm_(ref, max_norm, foreach=True)
        else:
            norm_ref = nn.utils.get_total_norm([p.grad for p in ref], foreach=True)
        norm = clip_grad_norm([p.grad for p in mine], max_norm)
        assert torch.equal(norm, norm_ref)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(ref, mine))
        if max_norm > 0 and scale == 1.0:
            assert abs(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in mine]))) - max_norm) < 1e-4
