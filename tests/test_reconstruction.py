"""Reconstruction: the least-squares core against torch's solver, fits that lower the error they target,
folding a linear map exactly, and reconstructed students that reload with identical logits."""

import copy
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError, PruningConfig, estimate_importance, prune_model, save_pruned_model
from hf_minitron.model_folder import read_record
from hf_minitron.reconstruction import (
    LeastSquares,
    ReconstructionConfig,
    fits,
    fold_linear_map,
    reconstruct_model,
    reconstruct_models,
    ridge_solve,
    sequential,
)
from hf_minitron.reconstruction.least_squares import gram_row_blocks, has_wide_output_mm, wide_mm

from helpers import FAMILY_CONFIGS, logits, tiny_calibration, tiny_model

WIDTH = PruningConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4)


def random_problem(bias: bool, tokens: int = 300, inputs: int = 12, outputs: int = 5):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, inputs, generator=generator, dtype=torch.float64)
    y = torch.randn(tokens, outputs, generator=generator, dtype=torch.float64)
    problem = LeastSquares(inputs, outputs, bias, torch.device("cpu"))
    for chunk in range(3):  # streamed in pieces, as calibration batches arrive
        rows = slice(chunk * tokens // 3, (chunk + 1) * tokens // 3)
        problem.add(x[rows], y[rows])
    return problem, x, y


@pytest.mark.parametrize("bias", [False, True])
def test_least_squares_equals_torch_lstsq(bias):
    problem, x, y = random_problem(bias)
    weight = torch.zeros(5, 12, dtype=torch.float64)
    new_weight, new_bias = problem.solve(weight, torch.zeros(5, dtype=torch.float64) if bias else None, damping=0)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else x
    expected = torch.linalg.lstsq(design, y).solution.t()
    torch.testing.assert_close(new_weight, expected[:, :12], rtol=1e-9, atol=1e-10)
    if bias:
        torch.testing.assert_close(new_bias, expected[:, 12], rtol=1e-9, atol=1e-10)


def test_error_from_statistics_equals_the_direct_error_and_damping_pulls_towards_the_prior():
    problem, x, y = random_problem(bias=False)
    prior = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    direct = ((x @ prior.t() - y).pow(2).sum() / y.pow(2).sum()).item()
    assert problem.relative_error(prior) == pytest.approx(direct, rel=1e-9)
    fitted, _ = problem.solve(prior, damping=0)
    assert problem.relative_error(fitted) < direct
    held, _ = problem.solve(prior, damping=1e8)  # overwhelming damping keeps the prior
    for damping in (0.0, 0.3):  # the error fit() reports without a product with G is the solution's error
        solution, _, error = problem.fit(prior, damping=damping)
        assert error == pytest.approx(problem.relative_error(solution), rel=1e-9)
    torch.testing.assert_close(held, prior, rtol=1e-5, atol=1e-5)


def test_ridge_solve_equals_the_damped_normal_equations_and_leaves_the_statistics_as_they_were():
    problem, _, _ = random_problem(bias=False)
    gram, cross = problem.gram.clone(), problem.cross.clone()
    prior = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lam = 0.3 * float(gram.diagonal().mean())
    expected = torch.linalg.solve(gram + lam * torch.eye(12, dtype=gram.dtype), cross + lam * prior)
    torch.testing.assert_close(ridge_solve(problem.gram, problem.cross, prior, 0.3), expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(problem.gram, gram) and torch.equal(problem.cross, cross)
    # Inputs that are always zero make G singular: with no damping asked for, some is added until it factors.
    gram[:, 3] = gram[3, :] = 0
    solution = ridge_solve(gram, cross, prior, damping=0)
    assert torch.isfinite(solution).all()


def test_16_bit_activations_give_the_statistics_of_their_exact_fp32_values():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 10, generator=generator).bfloat16()
    y = torch.randn(64, 4, generator=generator).bfloat16()
    problem = LeastSquares(10, 4, False, torch.device("cpu"))
    problem.add(x, y)
    torch.testing.assert_close(problem.symmetric_gram(), (x.double().t() @ x.double()), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(problem.cross, x.double().t() @ y.double(), rtol=1e-6, atol=1e-5)
    assert wide_mm(x.t(), y).dtype == torch.float32
    # On a GPU the same sums run on the tensor cores through torch.mm(..., out_dtype=torch.float32),
    # which this torch has (here on the meta device: shapes and dtypes only).
    assert has_wide_output_mm()
    wide = torch.mm(x.to("meta").t(), y.to("meta"), out_dtype=torch.float32)
    assert wide.shape == (10, 4) and wide.dtype == torch.float32


def test_a_wide_gram_matrix_is_accumulated_as_its_upper_triangle_and_solved_as_the_full_one():
    inputs = 2100  # wide enough for row blocks: only the upper triangle is multiplied out
    assert len(gram_row_blocks(inputs)) == 2
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(96, inputs, generator=generator, dtype=torch.float64)
    y = torch.randn(96, 3, generator=generator, dtype=torch.float64)
    problem = LeastSquares(inputs, 3, False, torch.device("cpu"))
    problem.add(x[:50], y[:50])
    problem.add(x[50:], y[50:])
    full = x.t() @ x
    torch.testing.assert_close(problem.symmetric_gram(), full)
    assert problem.gram[1500:, :1000].abs().max() == 0  # the lower block was never computed
    prior = torch.randn(3, inputs, generator=generator, dtype=torch.float64)
    lam = 0.5 * float(full.diagonal().mean())
    expected = torch.linalg.solve(full + lam * torch.eye(inputs, dtype=full.dtype), y.t().mm(x).t() + lam * prior.t())
    new_weight, _ = problem.solve(prior, damping=0.5)
    torch.testing.assert_close(new_weight, expected.t(), rtol=1e-7, atol=1e-9)
    direct = ((x @ prior.t() - y).pow(2).sum() / y.pow(2).sum()).item()
    assert problem.relative_error(prior) == pytest.approx(direct, rel=1e-9)


def test_a_solve_damps_the_statistics_in_place_and_leaves_them_as_accumulated():
    inputs = 2100  # row blocks: the solve fills G's lower part in from the upper blocks, in G's own storage
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(96, inputs, generator=generator, dtype=torch.float64)
    y = torch.randn(96, 3, generator=generator, dtype=torch.float64)
    prior = torch.randn(3, inputs, generator=generator, dtype=torch.float64)
    problem = LeastSquares(inputs, 3, False, torch.device("cpu"))
    problem.add(x[:50], y[:50])
    accumulated = problem.gram.triu().clone()
    first, _ = problem.solve(prior, damping=0.5)
    assert torch.equal(problem.gram.triu(), accumulated)  # the damped diagonal is put back bit for bit
    assert torch.equal(problem.gram, problem.gram.t())  # the lower triangle filled in from the upper one
    assert torch.equal(problem.solve(prior, damping=0.5)[0], first)
    assert torch.equal(ridge_solve(accumulated, problem.cross, prior.t(), 0.5).t(), first)  # as from a copy
    problem.add(x[50:], y[50:])  # tokens after a solve: the next solve must not read a stale lower part
    full = x.t() @ x
    lam = 0.5 * float(full.diagonal().mean())
    expected = torch.linalg.solve(full + lam * torch.eye(inputs, dtype=full.dtype), x.t() @ y + lam * prior.t())
    torch.testing.assert_close(problem.solve(prior, damping=0.5)[0], expected.t(), rtol=1e-7, atol=1e-9)


def kl_to_teacher(student, teacher, calibration, hidden=None) -> float:
    """Mean KL(teacher ‖ student) of next-token distributions over the calibration tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in calibration.batches(8):
            p = teacher(**batch).logits.log_softmax(-1)
            q = student(**batch).logits.log_softmax(-1)
            kl = (p.exp() * (p - q)).sum(-1)[batch["attention_mask"].bool()]
            total, count = total + float(kl.sum()), count + kl.numel()
    return total / count


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_width_reconstruction_lowers_every_fitted_error_and_the_divergence(family, monkeypatch):
    checks = []  # every family's layers are computed in parts (after one check against the whole layer)
    parts_match = fits.parts_match
    monkeypatch.setattr(fits, "parts_match", lambda *args: checks.append(parts_match(*args)) or checks[-1])
    teacher = tiny_model(family)
    calibration = tiny_calibration(num_samples=16, length=24)
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=4, progress=False)
    pruned = prune_model(copy.deepcopy(teacher), WIDTH, scores)
    student = copy.deepcopy(pruned)
    report = reconstruct_model(student, teacher, calibration, config=ReconstructionConfig(damping=0.01), progress=False)
    fitted = [fit[part] for fit in report["layers"] for part in ("attention", "mlp") if part in fit]
    assert len(fitted) == 2 * 4
    for fit in [*fitted, report["layers"][-1]]:  # the last entry is the final norm's scale
        assert fit["error_after"] <= fit["error_before"] + 1e-9
    assert kl_to_teacher(student, teacher, calibration) < kl_to_teacher(pruned, teacher, calibration)
    summary = student.config.minitron_pruning["reconstruction"]
    assert summary["tokens"] == calibration.num_tokens and summary["mlp_fits"] == 4
    assert checks == [True]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("span_method", ["refit", "linear_map"])
def test_depth_reconstruction_bridges_the_dropped_span(span_method, family):
    teacher = tiny_model(family, num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=16, length=24)
    pruned = prune_model(copy.deepcopy(teacher), PruningConfig(layers_to_drop=[2, 3]))
    student = copy.deepcopy(pruned)
    config = ReconstructionConfig(span_method=span_method, layers="changed", damping=0.01)
    report = reconstruct_model(student, teacher, calibration, config=config, progress=False)
    # Only the layer before the span changes: it now lands where teacher layer 3 would have.
    assert [fit.get("span") for fit in report["layers"]] == [None, [2, 3], None, None]
    assert ("linear_map" in report["layers"][1]["mlp"]) == (span_method == "linear_map")
    for name, param in student.named_parameters():
        if "layers.1.mlp.down_proj" not in name:
            assert torch.equal(param, pruned.get_parameter(name)), name
    assert kl_to_teacher(student, teacher, calibration) < kl_to_teacher(pruned, teacher, calibration)


def test_a_walk_stops_after_its_last_fit_with_the_student_of_the_whole_walk(monkeypatch):
    """With ``layers: changed`` a depth student's fits end at its dropped span: the teacher and the
    student stop there instead of running every calibration batch through the layers above."""
    teacher = tiny_model("llama", num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=16, length=24)
    pruned = prune_model(copy.deepcopy(teacher), PruningConfig(layers_to_drop=[1, 2]))
    config = ReconstructionConfig(layers="changed", damping=0.01, batch_size=4)
    teacher_passes, student_passes = [], []
    run_layer, student_run_layer = sequential.run_layer, fits.run_layer
    monkeypatch.setattr(sequential, "run_layer", lambda *a, **k: teacher_passes.append(1) or run_layer(*a, **k))
    monkeypatch.setattr(fits, "run_layer", lambda *a, **k: student_passes.append(1) or student_run_layer(*a, **k))

    def walk(student):
        report = reconstruct_model(student, teacher, calibration, config=config, progress=False)
        counts = (len(teacher_passes), len(student_passes))
        teacher_passes[:], student_passes[:] = [], []
        return report["layers"], counts

    early = copy.deepcopy(pruned)
    early_fits, early_counts = walk(early)
    monkeypatch.setattr(sequential, "_last_layer_needed", lambda walk, config, last: last)
    whole = copy.deepcopy(pruned)
    whole_fits, whole_counts = walk(whole)
    assert early_fits == whole_fits and [fit.get("span") for fit in early_fits] == [[1, 2], None, None, None]
    for name, param in whole.named_parameters():
        assert torch.equal(early.get_parameter(name), param), name
    # 4 batches: the teacher through its layers 0-2 (where the span ends) instead of all 6; the student
    # runs its layer 0 once per batch for the fit, then nothing, instead of also its 3 layers above.
    assert early_counts == (3 * 4, 4) and whole_counts == (6 * 4, 4 + 3 * 4)


def test_untouched_layers_below_the_first_fit_take_the_teachers_stream_with_the_same_student(monkeypatch):
    """Below a depth student's first fit its layers are copies of the teacher's on the teacher's input: their
    output is the teacher's, which the walk already has, so the student does not run them itself."""
    teacher = tiny_model("llama", num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=16, length=24)
    pruned = prune_model(copy.deepcopy(teacher), PruningConfig(layers_to_drop=[3, 4]))
    config = ReconstructionConfig(layers="changed", damping=0.01, batch_size=4)
    passes = []
    run_layer = fits.run_layer
    monkeypatch.setattr(fits, "run_layer", lambda *a, **k: passes.append(1) or run_layer(*a, **k))

    def walk():
        student = copy.deepcopy(pruned)
        report = reconstruct_model(student, teacher, calibration, config=config, progress=False)
        count, passes[:] = len(passes), []
        return student, report["layers"], count

    shared, shared_fits, shared_passes = walk()
    # As if the walk never followed the teacher: the student runs its layers 0 and 1 itself.
    monkeypatch.setattr(fits.StudentWalk, "follows_teacher", property(lambda self: False, lambda self, value: None))
    own, own_fits, own_passes = walk()
    assert shared_fits == own_fits and [fit.get("span") for fit in own_fits] == [None, None, [3, 4], None]
    for name, param in own.named_parameters():
        assert torch.equal(shared.get_parameter(name), param), name
    # 4 batches: layer 2's MLP fit runs it once per batch; walking alone adds layers 0 and 1.
    assert (shared_passes, own_passes) == (4, 4 + 2 * 4)


def test_folding_a_linear_map_equals_running_it_in_place_of_the_span(input_ids):
    """The saved model computes exactly what the pruned model computes with the map applied to its MLP output."""
    model = tiny_model("llama", num_hidden_layers=6, mlp_bias=True).double()
    prune_model(model, PruningConfig(layers_to_drop=[2, 3]))
    generator = torch.Generator().manual_seed(5)
    matrix = torch.eye(48, dtype=torch.float64) + 0.1 * torch.randn(48, 48, generator=generator, dtype=torch.float64)
    offset = 0.1 * torch.randn(48, generator=generator, dtype=torch.float64)
    mapped = copy.deepcopy(model)
    mapped.model.layers[1].mlp.register_forward_hook(lambda module, args, output: output @ matrix.t() + offset)
    with torch.no_grad():
        fold_linear_map(model.model.layers[1].mlp.down_proj, matrix, offset)
    torch.testing.assert_close(logits(model, input_ids), logits(mapped, input_ids), rtol=1e-12, atol=1e-12)


def test_reconstructed_student_reloads_with_identical_logits(tmp_path, input_ids):
    teacher = tiny_model("qwen2", num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=8)
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=4, progress=False)
    width = prune_model(copy.deepcopy(teacher), WIDTH, scores)
    depth = prune_model(copy.deepcopy(teacher), PruningConfig(layers_to_drop=[0, 4, 5]), scores)
    reconstruct_models(teacher, [width, depth], calibration, progress=False)  # one teacher pass for both
    for name, student in (("width", width), ("depth", depth)):
        expected = logits(student, input_ids)
        save_pruned_model(student, tmp_path / name)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        assert torch.equal(logits(reloaded, input_ids), expected)
        assert read_record(tmp_path / name)["reconstruction"]["settings"]["damping"] == 0.1


def test_bfloat16_students_are_fitted_in_wide_precision_and_keep_their_dtype():
    teacher = tiny_model("llama").to(torch.bfloat16)
    calibration = tiny_calibration(num_samples=16)
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=4, progress=False)
    student = prune_model(copy.deepcopy(teacher), WIDTH, scores)
    report = reconstruct_model(student, teacher, calibration, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())
    assert report["layers"][0]["mlp"]["error_after"] < report["layers"][0]["mlp"]["error_before"]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("span_method", ["refit", "linear_map"])
def test_layers_computed_in_parts_give_the_students_of_running_them_whole(family, span_method, monkeypatch):
    """After an attention fit the walk computes the layer's MLP inputs from the o_proj inputs it saw, and
    after the MLP fit the layer's output from the new projection (through Gemma's output norms), instead
    of running the layer again: the same students as running it, a third of the layer passes."""
    teacher = tiny_model(family, num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=16, length=24)
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=4, progress=False)
    pruned = prune_model(copy.deepcopy(teacher), replace(WIDTH, layers_to_drop=[2, 3]), scores)
    config = ReconstructionConfig(span_method=span_method, damping=0.01, batch_size=4)

    passes = []
    run_layer = fits.run_layer
    monkeypatch.setattr(fits, "run_layer", lambda *a, **k: passes.append(1) or run_layer(*a, **k))
    quick = copy.deepcopy(pruned)
    reconstruct_model(quick, teacher, calibration, config=config, progress=False)
    quick_passes, passes[:] = len(passes), []
    monkeypatch.setattr(fits, "parts_match", lambda *args: False)  # as if a family's layers differed
    whole = copy.deepcopy(pruned)
    reconstruct_model(whole, teacher, calibration, config=config, progress=False)
    # 4 layers × 4 batches: the attention fit's pass (to o_proj), then, whole, the MLP fit's and one to
    # move on; in parts, one batch through the whole layer once, to check the parts against it.
    assert (quick_passes, len(passes)) == (4 * 4 + 1, 4 * (4 + 4 + 4))
    for name, param in whole.named_parameters():
        torch.testing.assert_close(quick.get_parameter(name), param, rtol=1e-5, atol=1e-6, msg=name)


def test_students_that_do_not_belong_to_the_teacher_are_refused():
    teacher = tiny_model("llama")
    calibration = tiny_calibration()
    with pytest.raises(MinitronError, match="no pruning record"):
        reconstruct_model(tiny_model("llama", seed=2), teacher, calibration, progress=False)
    other = prune_model(tiny_model("llama", num_hidden_layers=6), PruningConfig(layers_to_drop=[0]))
    with pytest.raises(MinitronError, match="not pruned from this teacher"):
        reconstruct_model(other, teacher, calibration, progress=False)
    with pytest.raises(MinitronError, match="damping"):
        ReconstructionConfig(damping=-1)
