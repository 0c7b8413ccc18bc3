"""Mixture-of-experts pruning on tiny Qwen3-MoE and Mixtral models: fewer experts, narrower experts.

The exact references: experts the router can never pick, and expert neurons that are always zero,
can be removed without changing a single logit.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import ImportanceScores, MinitronError, PruningConfig, estimate_importance, prune_model
from hf_minitron.model_folder import read_record
from hf_minitron.moe import sparse_layers
from hf_minitron.reconstruction import ReconstructionConfig, reconstruct_model

from helpers import MOE_FAMILY_CONFIGS, char_tokenizer, logits, tiny_calibration, tiny_model, tiny_moe_model

FAMILIES = list(MOE_FAMILY_CONFIGS)
UNUSED = [4, 5]


def scores_of(model):
    return estimate_importance(model, calibration_data=tiny_calibration(), batch_size=3, progress=False)


def reloaded(model, tmp_path):
    model.save_pretrained(tmp_path / "pruned")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()


@torch.no_grad()
def route_never_to_last_two(model):
    """Router rows a, −a, b, −b, 0, 0: each token's two largest logits are |a·h| and |b·h| (≥ 0), so the
    zero rows (experts 4 and 5) never make a top-2 while experts 0–3 all get tokens."""
    for router, _ in sparse_layers(model).values():
        a, b = router.weight[0].clone(), router.weight[2].clone()
        router.weight.copy_(torch.stack([a, -a, b, -b, torch.zeros_like(a), torch.zeros_like(a)]))
    return model


@torch.no_grad()
def silence_neurons(model, keep: int, seed: int = 3):
    """Zero the gate and up rows of all but ``keep`` neurons of every expert, a different set per expert:
    act(0) · 0 = 0, so those neurons never contribute."""
    generator = torch.Generator().manual_seed(seed)
    for _, experts in sparse_layers(model).values():
        width = experts.down_proj.shape[-1]
        for expert in range(experts.gate_up_proj.shape[0]):
            dead = torch.randperm(width, generator=generator)[: width - keep]
            experts.gate_up_proj[expert, dead] = 0
            experts.gate_up_proj[expert, dead + width] = 0
    return model


WITH_DENSE_LAYERS = ("qwen3_moe", "qwen2_moe")


def moe_model(family, **overrides):
    if family in WITH_DENSE_LAYERS:
        overrides.setdefault("mlp_only_layers", [1])  # one dense layer among the sparse ones
    return tiny_moe_model(family, **overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_half_the_experts_removed_reloads_identically(family, tmp_path, input_ids):
    model = moe_model(family)
    pruned = prune_model(copy.deepcopy(model), PruningConfig(num_experts=3), scores_of(model))
    assert pruned.config.num_experts == 3
    for router, experts in sparse_layers(pruned).values():
        assert router.weight.shape[0] == 3 and experts.gate_up_proj.shape[0] == 3 and experts.down_proj.shape[0] == 3
    torch.testing.assert_close(logits(reloaded(pruned, tmp_path), input_ids), logits(pruned, input_ids), rtol=0, atol=0)
    kept = pruned.config.minitron_pruning["kept_experts"]
    assert set(kept) == {str(i) for i in sparse_layers(model)} and all(len(v) == 3 for v in kept.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_experts_the_router_never_picks_go_first_and_nothing_changes(family, input_ids):
    model = route_never_to_last_two(moe_model(family))
    scores = scores_of(model)
    for layer in sparse_layers(model):
        assert torch.all(scores.expert_saliency[layer, UNUSED] == 0)
        assert torch.all(scores.expert_saliency[layer, :4] > 0)
        assert torch.all(scores.expert_frequency[layer, UNUSED] == 0)
        # Every token goes to exactly top-k experts.
        assert scores.expert_frequency[layer].sum() == pytest.approx(model.config.num_experts_per_tok)
    before = logits(model, input_ids)
    pruned = prune_model(copy.deepcopy(model), PruningConfig(num_experts=4), scores)
    assert all(v == [0, 1, 2, 3] for v in pruned.config.minitron_pruning["kept_experts"].values())
    torch.testing.assert_close(logits(pruned, input_ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_saliency_drops_a_routed_but_silent_expert_that_frequency_keeps(family):
    model = route_never_to_last_two(moe_model(family))
    with torch.no_grad():
        for _, experts in sparse_layers(model).values():
            experts.down_proj[0] = 0  # routed to as often as before, but writes nothing
    scores = scores_of(model)
    by_saliency = prune_model(copy.deepcopy(model), PruningConfig(num_experts=3, expert_selection="saliency"), scores)
    assert all(v == [1, 2, 3] for v in by_saliency.config.minitron_pruning["kept_experts"].values())
    by_frequency = prune_model(copy.deepcopy(model), PruningConfig(num_experts=4, expert_selection="frequency"), scores)
    assert all(v == [0, 1, 2, 3] for v in by_frequency.config.minitron_pruning["kept_experts"].values())
    # Routed output mass (saliency × frequency): a silent expert has none either.
    by_mass = prune_model(copy.deepcopy(model), PruningConfig(num_experts=3, expert_selection="mass"), scores)
    assert all(v == [1, 2, 3] for v in by_mass.config.minitron_pruning["kept_experts"].values())


def test_mass_ranks_a_busy_expert_above_a_rarely_chosen_loud_one():
    """REAP's mean over routed tokens can prefer an expert chosen once with a large output; the mass
    (summed over all tokens) weighs in how often it is chosen."""
    model = moe_model("qwen3_moe")
    scores = scores_of(model)
    layers, count = scores.expert_saliency.shape
    saliency = torch.ones(layers, count)
    saliency[:, 0] = 10.0  # loud when chosen ...
    frequency = torch.full((layers, count), 0.3)
    frequency[:, 0] = 0.01  # ... but hardly ever chosen
    scores.expert_saliency, scores.expert_frequency = saliency, frequency
    keep = count - 1
    by_saliency = prune_model(
        copy.deepcopy(model), PruningConfig(num_experts=keep, expert_selection="saliency"), scores
    )
    by_mass = prune_model(copy.deepcopy(model), PruningConfig(num_experts=keep), scores)  # the default
    assert all(0 in v for v in by_saliency.config.minitron_pruning["kept_experts"].values())
    assert all(0 not in v for v in by_mass.config.minitron_pruning["kept_experts"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_width_pruning_removes_silent_neurons_exactly_and_reloads(family, tmp_path, input_ids):
    model = silence_neurons(moe_model(family), keep=12)
    scores = scores_of(model)
    assert torch.all(scores.expert_frequency[list(sparse_layers(model))] > 0)  # every expert's neurons were seen
    before = logits(model, input_ids)
    pruned = prune_model(copy.deepcopy(model), PruningConfig(moe_intermediate_size=12), scores)
    width_key = "intermediate_size" if family == "mixtral" else "moe_intermediate_size"
    assert getattr(pruned.config, width_key) == 12
    if family in WITH_DENSE_LAYERS:  # the dense layer keeps its own MLP width
        assert pruned.config.intermediate_size == 80 and pruned.model.layers[1].mlp.down_proj.in_features == 80
    if family == "qwen2_moe":  # the shared expert keeps its own width, weights and cached size alike
        shared = pruned.model.layers[0].mlp.shared_expert
        assert shared.intermediate_size == shared.down_proj.in_features == 40
    torch.testing.assert_close(logits(pruned, input_ids), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(reloaded(pruned, tmp_path), input_ids), logits(pruned, input_ids), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_heads_depth_and_experts_together_reload_identically(family, tmp_path, input_ids):
    model = moe_model(family)
    config = PruningConfig(
        hidden_size=36,
        num_attention_heads=3,
        num_key_value_heads=1,
        layers_to_drop=[0],  # Qwen-MoE: the dense layer moves from index 1 to 0
        num_experts=4,
        moe_intermediate_size=16,
    )
    pruned = prune_model(copy.deepcopy(model), config, scores_of(model))
    if family in WITH_DENSE_LAYERS:
        assert pruned.config.mlp_only_layers == [0]
    again = reloaded(pruned, tmp_path)
    assert [type(layer.mlp).__name__ for layer in again.model.layers] == [
        type(layer.mlp).__name__ for layer in pruned.model.layers
    ]
    torch.testing.assert_close(logits(again, input_ids), logits(pruned, input_ids), rtol=0, atol=0)


def test_expert_scores_survive_save_and_load(tmp_path):
    model = moe_model("qwen3_moe")
    scores = scores_of(model)
    loaded = ImportanceScores.load(scores.save(tmp_path / "scores", plots=False))
    for name in ("expert_saliency", "expert_frequency", "expert_neurons"):
        torch.testing.assert_close(getattr(loaded, name), getattr(scores, name))
    loaded.check_matches(model)
    with pytest.raises(MinitronError, match="experts: scores 6, model 4"):
        loaded.check_matches(moe_model("qwen3_moe", num_local_experts=4))


@pytest.mark.parametrize(
    ("family", "settings", "message"),
    [
        ("qwen3_moe", dict(num_experts=1), "fewer than num_experts_per_tok=2"),
        ("qwen3_moe", dict(num_experts=7), "larger than the model's 6"),
        ("mixtral", dict(moe_intermediate_size=40), "larger than the model's 32"),
        ("mixtral", dict(intermediate_size=16), "ask for moe_intermediate_size=16"),
        ("llama", dict(num_experts=2), "Llama has no experts"),
    ],
)
def test_impossible_expert_targets_are_refused_before_any_change(family, settings, message):
    model = moe_model(family) if family in FAMILIES else tiny_model(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MinitronError, match=message):
        prune_model(model, PruningConfig(**settings), None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_expert_pruning_needs_expert_scores():
    model = moe_model("mixtral")
    scores = scores_of(model)
    scores.expert_saliency = scores.expert_frequency = scores.expert_neurons = None
    with pytest.raises(MinitronError, match="no expert importance"):
        prune_model(model, PruningConfig(num_experts=4), scores)
    with pytest.raises(MinitronError, match="choose which experts"):
        prune_model(model, PruningConfig(num_experts=4), None)
    with pytest.raises(MinitronError, match="expert_selection"):
        PruningConfig(num_experts=4, expert_selection="random")


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruction_refits_attention_everywhere_and_only_dense_mlps(family):
    teacher = moe_model(family)
    calibration = tiny_calibration(num_samples=8, length=24)
    config = PruningConfig(hidden_size=36, num_attention_heads=3, num_key_value_heads=1, num_experts=4)
    student = prune_model(copy.deepcopy(teacher), config, scores_of(teacher))
    report = reconstruct_model(student, teacher, calibration, config=ReconstructionConfig(damping=0.01), progress=False)
    layers = [fit for fit in report["layers"] if fit["layer"] != "final_norm"]
    assert all("attention" in fit for fit in layers) and len(layers) == 4
    dense = [fit["layer"] for fit in layers if "mlp" in fit]
    assert dense == ([1] if family in WITH_DENSE_LAYERS else [])
    for fit in layers:
        for part in ("attention", "mlp"):
            if part in fit:
                assert fit[part]["error_after"] <= fit[part]["error_before"] + 1e-9


def test_prune_command_cuts_experts_from_flags(tmp_path):
    from hf_minitron.cli import main

    moe_model("qwen3_moe").save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text("Sphinx of black quartz, judge my vow. " * 60)
    argv = ["prune", "--model", tmp_path / "model", "--data", tmp_path / "text.txt", "--num-samples", 6]
    argv += ["--seq-len", 32, "--batch-size", 3, "--num-experts", 4, "--moe-intermediate-size", 16]
    argv += ["--expert-selection", "frequency", "--output", tmp_path / "pruned"]
    assert main([str(a) for a in argv]) == 0
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert (pruned.config.num_experts, pruned.config.moe_intermediate_size) == (4, 16)
    assert read_record(tmp_path / "pruned")["expert_selection"] == "frequency"
    saved = PruningConfig.from_pretrained(tmp_path / "pruned")
    assert (saved.num_experts, saved.moe_intermediate_size, saved.expert_selection) == (4, 16, "frequency")


@torch.no_grad()
def test_saliency_equals_gate_weight_times_output_norm_from_the_models_own_experts():
    model = moe_model("mixtral")
    calibration = tiny_calibration(num_samples=3)
    scores = estimate_importance(model, calibration_data=calibration, batch_size=3, progress=False)
    layer = model.model.layers[2]
    seen = {}
    handle = layer.mlp.register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0]))
    model(**next(iter(calibration.batches(3))))
    handle.remove()
    hidden = seen["hidden"].reshape(-1, model.config.hidden_size)
    _, weights, chosen = layer.mlp.gate(hidden)
    for expert in range(6):
        # The experts module itself, with every other routing slot weighted zero: gate weight × expert output.
        alone = layer.mlp.experts(hidden, chosen, torch.where(chosen == expert, weights, torch.zeros_like(weights)))
        routed = (chosen == expert).any(-1)
        expected = alone[routed].norm(dim=-1).mean() if routed.any() else torch.tensor(0.0)
        assert scores.expert_saliency[2, expert] == pytest.approx(float(expected), rel=1e-4)
        assert scores.expert_frequency[2, expert] == pytest.approx(float(routed.float().mean()))


def test_padding_never_counts_for_experts():
    model = moe_model("qwen3_moe")
    padded = tiny_calibration(padded=True)
    one_by_one = estimate_importance(model, calibration_data=padded, batch_size=1, progress=False)
    batched = estimate_importance(model, calibration_data=padded, batch_size=3, progress=False)
    for name in ("expert_saliency", "expert_frequency", "expert_neurons"):
        torch.testing.assert_close(getattr(batched, name), getattr(one_by_one, name), rtol=1e-4, atol=1e-6)


def test_expert_pruned_layers_below_a_depth_fit_run_themselves(monkeypatch):
    """Layers that lost experts are no copies of the teacher's: the walk runs them, as if it never took the
    teacher's stream, and re-fits the dense layer before the dropped span on what they compute."""
    from hf_minitron.reconstruction import fits

    teacher = tiny_moe_model("qwen3_moe", num_hidden_layers=6, mlp_only_layers=[2])
    calibration = tiny_calibration(num_samples=8, length=24)
    student = prune_model(
        copy.deepcopy(teacher), PruningConfig(num_experts=4, layers_to_drop=[3, 4]), scores_of(teacher)
    )
    config = ReconstructionConfig(layers="changed", damping=0.01, batch_size=4)
    walked = copy.deepcopy(student)
    reconstruct_model(walked, teacher, calibration, config=config, progress=False)
    monkeypatch.setattr(fits.StudentWalk, "follows_teacher", property(lambda self: False, lambda self, value: None))
    reconstruct_model(student, teacher, calibration, config=config, progress=False)
    for name, param in student.named_parameters():
        assert torch.equal(walked.get_parameter(name), param), name
