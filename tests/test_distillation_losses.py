"""Every distillation loss against a straightforward reference; chunked equals plain, values and gradients."""

import pytest
import torch

from hf_minitron.distillation.losses import (
    DIVERGENCES,
    chunked_logit_loss,
    divergence_and_grad,
    intermediate_state_loss,
    plain_logit_loss,
)


def reference_divergence(student_logits, teacher_logits, kind, beta=0.5, temperature=1.0):
    """Textbook formulas in probability space, one token at a time."""
    q = torch.softmax(student_logits.double() / temperature, -1)
    p = torch.softmax(teacher_logits.double() / temperature, -1)
    if kind == "forward_kl":
        return (p * (p.log() - q.log())).sum(-1)
    if kind == "reverse_kl":
        return (q * (q.log() - p.log())).sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)


def make_case(n=40, d=12, dt=20, v=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(n, d, generator=g, requires_grad=True)
    student_weight = (torch.randn(v, d, generator=g) * 0.5).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(n, dt, generator=g), torch.randn(v, dt, generator=g) * 0.5
    weights = torch.full((n,), 1.0 / n)
    targets = torch.randint(0, v, (n,), generator=g)
    return student_hidden, student_weight, teacher_hidden, teacher_weight, weights, targets


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_divergence_and_its_closed_form_gradient(kind, temperature):
    g = torch.Generator().manual_seed(1)
    student = torch.randn(7, 30, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 30, generator=g, dtype=torch.float64)
    expected = reference_divergence(student, teacher, kind, beta=0.3, temperature=temperature)
    value, grad = divergence_and_grad(student / temperature, teacher / temperature, kind, beta=0.3)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    (autograd,) = torch.autograd.grad(expected.sum(), student)
    torch.testing.assert_close(grad.double() / temperature, autograd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_chunked_equals_plain_values_and_gradients(kind, ce_weight, chunk_size):
    sh, sw, th, tw, w, targets = make_case()
    settings = dict(temperature=1.5, divergence=kind, beta=0.4, ce_weight=ce_weight)
    chunked = chunked_logit_loss(sh, sw, th, tw, w, targets, chunk_size=chunk_size, **settings)
    grads_chunked = torch.autograd.grad(chunked * 3.0, (sh, sw))  # an upstream scale passes through
    plain = plain_logit_loss(sh, sw, th, tw, w, targets, **settings)
    grads_plain = torch.autograd.grad(plain * 3.0, (sh, sw))
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads_chunked, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    reference = (reference_divergence(sh @ sw.t(), th @ tw.t(), kind, 0.4, 1.5) * w.double()).sum()
    if not ce_weight:
        torch.testing.assert_close(chunked.double(), reference, rtol=1e-5, atol=1e-7)


def test_stats_report_per_component_sums():
    sh, sw, th, tw, w, targets = make_case()
    stats = {}
    loss = chunked_logit_loss(sh, sw, th, tw, w, targets, ce_weight=0.25, stats=stats, chunk_size=16)
    ce = torch.nn.functional.cross_entropy(sh @ sw.t(), targets)
    torch.testing.assert_close(stats["ce"], ce.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.detach(), stats["kl"] + 0.25 * stats["ce"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_intermediate_state_losses(kind):
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(9, 16, generator=g), torch.randn(9, 16, generator=g)
    weights = torch.rand(9, generator=g)
    value = intermediate_state_loss(student, teacher, weights, kind)
    expected = 0.0
    for i in range(9):
        s, t = student[i], teacher[i]
        per = 1 - (s @ t) / (s.norm() * t.norm()) if kind == "cosine" else ((s - t) ** 2).sum() / 16
        expected += weights[i] * per
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert intermediate_state_loss(teacher, teacher, weights, kind) < 1e-5


def test_no_full_logits_are_kept_for_backward():
    """Only hidden- and weight-sized gradients are saved, not [tokens × vocab] activations."""
    sh, sw, th, tw, w, targets = make_case(n=64, v=512)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = chunked_logit_loss(sh, sw, th, tw, w, targets, chunk_size=8)
    assert saved and max(saved) <= 512 * 12  # the LM-head gradient; logits would be 64 × 512
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        plain_logit_loss(sh, sw, th, tw, w, targets)
    assert max(saved) >= 64 * 512  # the plain loss keeps full logits for backward
    assert loss.requires_grad
