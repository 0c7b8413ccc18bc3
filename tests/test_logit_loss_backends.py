"""Every logit-loss backend that runs here against the fp32 full-logit reference, in fp32 and bf16.

Errors are relative, ‖a − b‖ / ‖b‖, in the loss and in both gradients. fp32 inputs: 1e-5 for the
project's backends, 1e-3 for Liger. bf16 inputs: the loss within 1e-3; a bf16 gradient cannot be
closer than rounding the exact one to bf16 (about 1.7e-3 here), and the gradient matmuls take
bf16 inputs on tensor cores, so gradients are held to 3e-3. The compiled backend runs where
torch.compile works (a C++ compiler on the CPU); Liger only where it is installed.
"""

import importlib.util

import pytest
import torch

from hf_minitron.distillation.losses import (
    DIVERGENCES,
    DenseTeacher,
    auto_chunk_size,
    chunked_logit_loss,
    logit_loss_from_teacher,
    plain_logit_loss,
)
from hf_minitron.distillation.losses import backends as backend_module
from hf_minitron.distillation.losses import chunked as chunked_module
from hf_minitron.distillation.sparse import SparseTeacher, plain_sparse_logit_loss, topk_with_tail

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
TOLERANCE = 1e-3
BF16_GRADIENTS = 3e-3


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_case(n=40, d=12, dt=20, v=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    student_weight = (torch.randn(v, d, generator=g) * 0.5).to(dtype).requires_grad_()
    teacher_hidden = torch.randn(n, dt, generator=g).to(dtype)
    teacher_weight = (torch.randn(v, dt, generator=g) * 0.5).to(dtype)
    weights = torch.tensor(1.0 / n).expand(n)  # one weight for every token, as the trainer passes it
    targets = torch.randint(0, v, (n,), generator=g)
    return student_hidden, student_weight, teacher_hidden, teacher_weight, weights, targets


def reference(sh, sw, th, tw, w, targets, **settings):
    """The fp32 full-logit loss and its gradients on fp32 copies of the inputs (whatever their dtype)."""
    settings.pop("track_ce", None)
    sh32, sw32 = sh.detach().float().requires_grad_(), sw.detach().float().requires_grad_()
    loss = plain_logit_loss(sh32, sw32, th.float(), tw.float(), w.float(), targets, **settings)
    return (loss, *torch.autograd.grad(loss, (sh32, sw32)))


def run(backend, sh, sw, th, tw, w, targets, chunk_size=16, **settings):
    stats = {}
    settings.update(chunk_size=chunk_size, backend=backend, stats=stats)
    loss = chunked_logit_loss(sh, sw, th, tw, w, targets, **settings)
    return (loss, *torch.autograd.grad(loss, (sh, sw))), stats


def _compile_works() -> bool:
    sh, sw, th, tw, w, targets = make_case(n=4, v=8)
    try:
        _, stats = run("compiled", sh, sw, th, tw, w, targets)
    except Exception:
        return False
    return stats["backend"] == "compiled"


@pytest.fixture(scope="module")
def compiled_available():
    if not _compile_works():
        pytest.skip("torch.compile does not work on this machine")


def assert_matches(result, expected, tolerance=TOLERANCE, gradient_tolerance=None):
    names = ("loss", "student hidden grad", "LM-head grad")
    limits = (tolerance, gradient_tolerance or tolerance, gradient_tolerance or tolerance)
    for name, a, b, limit in zip(names, result, expected, limits, strict=True):
        error = relative(a, b)
        assert error <= limit, f"{name}: relative error {error:.2e} > {limit:.0e}"


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_chunked_backend_matches_the_reference(kind, ce_weight, temperature):
    case = make_case()
    settings = dict(temperature=temperature, divergence=kind, beta=0.3, ce_weight=ce_weight)
    result, stats = run("chunked", *case, **settings)
    assert stats["backend"] == "chunked"
    assert_matches(result, reference(*case, **settings), tolerance=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_compiled_backend_matches_the_reference(kind, compiled_available):
    case = make_case()
    settings = dict(temperature=1.7, divergence=kind, beta=0.3, ce_weight=0.5, track_ce=True)
    result, stats = run("compiled", *case, **settings)
    assert stats["backend"] == "compiled"
    assert_matches(result, reference(*case, **settings), tolerance=1e-5)
    _, chunked_stats = run("chunked", *case, **settings)
    for key in ("kl", "ce"):
        torch.testing.assert_close(stats[key], chunked_stats[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["chunked", "compiled"])
@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_bf16_inputs_stay_within_tolerance_of_the_fp32_reference(backend, kind, request):
    """bf16 hidden states and weights: bf16 products, fp32 softmax and accumulation."""
    if backend == "compiled":
        request.getfixturevalue("compiled_available")
    case = make_case(n=96, d=32, dt=48, v=256, dtype=torch.bfloat16)
    settings = dict(divergence=kind, beta=0.3, ce_weight=0.25)
    result, stats = run(backend, *case, chunk_size=32, **settings)
    assert stats["backend"] == backend
    assert result[1].dtype == result[2].dtype == torch.bfloat16
    assert_matches(result, reference(*case, **settings), gradient_tolerance=BF16_GRADIENTS)


@pytest.mark.skipif(not HAS_LIGER, reason="liger-kernel is not installed")
@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_liger_backend_matches_the_reference(kind, ce_weight):
    case = make_case()
    settings = dict(temperature=1.7, divergence=kind, beta=0.3, ce_weight=ce_weight, track_ce=True)
    result, stats = run("liger", *case, **settings)
    assert stats["backend"] == "liger"
    assert_matches(result, reference(*case, **settings))
    _, chunked_stats = run("chunked", *case, **settings)
    for key in ("kl", "ce"):
        assert relative(stats[key], chunked_stats[key]) <= TOLERANCE


@pytest.mark.skipif(not HAS_LIGER, reason="liger-kernel is not installed")
def test_liger_backend_in_bf16():
    case = make_case(n=96, d=32, dt=48, v=256, dtype=torch.bfloat16)
    result, stats = run("liger", *case, chunk_size=32)
    assert stats["backend"] == "liger"
    # Liger keeps logits and the LM-head gradient in bf16: looser than the project's fp32 accumulation.
    assert_matches(result, reference(*case), tolerance=2e-2)


def test_liger_falls_back_where_it_cannot_serve():
    sh, sw, th, tw, _, targets = make_case()
    per_token = torch.linspace(0.5, 1.5, sh.shape[0]) / sh.shape[0]  # weights that differ per token
    result, stats = run("liger", sh, sw, th, tw, per_token, targets)
    assert stats["backend"] == "chunked"
    assert_matches(result, reference(sh, sw, th, tw, per_token, targets), tolerance=1e-5)


@pytest.mark.parametrize("backend", ["compiled", "liger"])
def test_cached_teachers_run_on_the_eager_chunk(backend):
    sh, sw, th, tw, w, targets = make_case()
    teacher = SparseTeacher(*topk_with_tail(th @ tw.t(), 8))
    stats = {}
    loss = logit_loss_from_teacher(sh, sw, teacher, w, targets, chunk_size=16, backend=backend, stats=stats)
    assert stats["backend"] == "chunked"
    expected = plain_sparse_logit_loss(sh, sw, teacher, w)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["auto", "chunked", "liger"])
def test_no_gradient_work_without_grad_mode(backend, monkeypatch):
    """Evaluation (torch.no_grad) builds no LM-head gradient buffer and runs no gradient matmul."""
    sh, sw, th, tw, w, targets = make_case()
    with_grad = chunked_logit_loss(sh, sw, th, tw, w, targets, chunk_size=16, ce_weight=0.5)

    def forbidden(*args, **kwargs):
        raise AssertionError("gradient work under no_grad")

    monkeypatch.setattr(chunked_module, "add_product_", forbidden)
    monkeypatch.setattr(chunked_module.ChunkedLogitLoss, "apply", forbidden)
    stats = {}
    with torch.no_grad():
        loss = chunked_logit_loss(
            sh, sw, th, tw, w, targets, chunk_size=16, ce_weight=0.5, backend=backend, stats=stats
        )
    assert not loss.requires_grad and stats["backend"] == "chunked"
    torch.testing.assert_close(loss, with_grad.detach(), rtol=1e-6, atol=1e-7)
    teacher = SparseTeacher(*topk_with_tail(th @ tw.t(), 8))
    with torch.no_grad():
        sparse = logit_loss_from_teacher(sh, sw, teacher, w, chunk_size=16, backend=backend)
    torch.testing.assert_close(sparse, plain_sparse_logit_loss(sh, sw, teacher, w).detach(), rtol=1e-5, atol=1e-6)


def test_auto_choices_on_the_cpu():
    assert backend_module.auto_backend(torch.device("cpu")) == "chunked"
    assert auto_chunk_size(128256, torch.device("cpu")) == 1024
    assert auto_chunk_size(128256, torch.device("cuda")) == 2048  # 2048 × 128256 × 4 bytes ≤ 1 GiB
    assert auto_chunk_size(49152, torch.device("cuda")) == 4096
    assert auto_chunk_size(32, torch.device("cuda")) == 8192
    sh, sw, th, tw, w, targets = make_case()
    teacher = DenseTeacher(th, tw)
    stats = {}
    logit_loss_from_teacher(sh, sw, teacher, w, targets, stats=stats)
    assert stats["backend"] == "chunked"
    with pytest.raises(ValueError, match="not one of"):
        logit_loss_from_teacher(sh, sw, teacher, w, targets, backend="triton")


def test_fp32_output_matmuls_and_their_fallbacks(monkeypatch):
    """The CUDA path's dispatch, on the CPU: fp32-output kernels used once they pass their probe, and the
    fallback taken (with the same result) when one fails on a real call."""
    from hf_minitron.distillation.losses import matmul

    calls = []

    def fused_mm(a, b):  # what CUDA's mm(..., out_dtype=fp32) computes
        calls.append("mm")
        return a.float() @ b.float()

    def fused_add(acc, a, b):
        calls.append("addmm")
        return acc.addmm_(a.float(), b.float())

    monkeypatch.setattr(matmul, "_SUPPORT", {})
    monkeypatch.setattr(matmul, "_fused_mm", fused_mm)
    monkeypatch.setattr(matmul, "_fused_add", fused_add)
    case = make_case(n=96, d=32, dt=48, v=256, dtype=torch.bfloat16)
    expected = reference(*case)
    result, _ = run("chunked", *case, chunk_size=32)
    assert_matches(result, expected, gradient_tolerance=BF16_GRADIENTS)
    assert calls.count("addmm") == 1 + 3 and calls.count("mm") == 1 + 2 * 3  # probes, then every chunk

    def failing_add(acc, a, b):
        if a.shape[0] > 24:  # passes the probe, fails on the loss's real shapes
            raise RuntimeError("unsupported layout")
        return fused_add(acc, a, b)

    monkeypatch.setattr(matmul, "_SUPPORT", {})
    monkeypatch.setattr(matmul, "_fused_add", failing_add)
    result, _ = run("chunked", *case, chunk_size=32)
    assert_matches(result, expected, gradient_tolerance=BF16_GRADIENTS)
    assert matmul._SUPPORT[("addmm", "cpu", torch.bfloat16)] is False
