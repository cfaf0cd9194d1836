import math

import pytest
import torch
import torch.nn.functional as F

from ablate.distill.losses import (
    HiddenProjection,
    combine_dynamic,
    cosine_loss,
    cross_entropy_loss,
    intermediate_loss,
    kl_div_loss,
)
from tests.distill.conftest import tiny_model


def test_kl_is_zero_when_the_student_is_the_teacher():
    model = tiny_model(seed=1)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
        same = model(ids).logits
    assert kl_div_loss(same, logits).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_div_loss(same, logits, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_a_hand_computation():
    # Two tokens, three classes. p_t = softmax(t), p_s = softmax(s).
    teacher = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    student = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])

    def softmax(xs):
        exps = [math.exp(x) for x in xs]
        return [e / sum(exps) for e in exps]

    def kl(t, s):
        pt, ps = softmax(t), softmax(s)
        return sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))

    expected = (kl([1, 2, 3], [3, 2, 1]) + kl([0, 0, 0], [1, 0, 0])) / 2
    assert kl_div_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)

    # Temperature T: both distributions softened by T, the result scaled by T^2.
    T = 2.0
    expected_t = (kl([0.5, 1, 1.5], [1.5, 1, 0.5]) + kl([0, 0, 0], [0.5, 0, 0])) / 2 * T**2
    assert kl_div_loss(student, teacher, temperature=T).item() == pytest.approx(expected_t, rel=1e-6)

    # A mask keeps only the chosen tokens.
    masked = kl_div_loss(student, teacher, mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(kl([1, 2, 3], [3, 2, 1]), rel=1e-6)


def test_kl_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 3, 7, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda s: kl_div_loss(s, teacher, temperature=1.0), (student,))
    assert torch.autograd.gradcheck(lambda s: kl_div_loss(s, teacher, temperature=0.5), (student,))
    # Analytic gradient of KL(p_t || softmax(s)) w.r.t. s is (p_s - p_t) / n_tokens.
    loss = kl_div_loss(student, teacher)
    (grad,) = torch.autograd.grad(loss, student)
    expected = (F.softmax(student, -1) - F.softmax(teacher, -1)) / 6
    torch.testing.assert_close(grad, expected.detach())


def test_kl_is_float32_and_stable_for_bf16_and_huge_logits():
    student = (torch.randn(4, 50) * 1e4).to(torch.bfloat16)
    teacher = (torch.randn(4, 50) * 1e4).to(torch.bfloat16)
    loss = kl_div_loss(student, teacher)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    # A teacher putting (numerically) zero probability on some classes is exact, not NaN.
    t = torch.tensor([[0.0, -1e30, -1e30]])
    assert kl_div_loss(torch.zeros(1, 3), t).item() == pytest.approx(math.log(3), rel=1e-6)


def test_kl_refuses_different_shapes():
    with pytest.raises(ValueError, match="differ"):
        kl_div_loss(torch.zeros(2, 5), torch.zeros(2, 6))


def test_cross_entropy_matches_the_models_own_lm_loss():
    model = tiny_model(seed=2)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert cross_entropy_loss(out.logits, ids).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_cosine_and_projection():
    x = torch.randn(2, 4, 6)
    assert cosine_loss(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    same = HiddenProjection(6, 6)
    assert same.proj is None and same(x) is x
    # A known channel selection starts as the map that puts kept channels back where they were.
    proj = HiddenProjection(3, 6, kept_channels=[0, 2, 5])
    y = proj(torch.tensor([[1.0, 2.0, 3.0]]))
    assert y.tolist() == [[1.0, 0.0, 2.0, 0.0, 0.0, 3.0]]
    teacher = torch.zeros(1, 6)
    teacher[0, [0, 2, 5]] = torch.tensor([1.0, 2.0, 3.0])
    assert intermediate_loss([torch.tensor([[1.0, 2.0, 3.0]])], [teacher], proj).item() == pytest.approx(
        0, abs=1e-6
    )


def test_dynamic_weight_balances_the_two_terms():
    logit = torch.tensor(0.6, requires_grad=True)
    inter = torch.tensor(0.2, requires_grad=True)
    total = combine_dynamic(logit, inter)
    assert total.item() == pytest.approx(1.2)
    total.backward()
    assert logit.grad.item() == pytest.approx(1.0)
    assert inter.grad.item() == pytest.approx(3.0)  # alpha = 0.6 / 0.2, a constant for the gradient
