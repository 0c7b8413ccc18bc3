"""Width pruning on every family: reload gives identical logits, shapes and counts are right,
and removing heads / neurons equals zeroing them in the original (an exact reference)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError, PruningConfig, estimate_importance, model_shape, prune_model, save_pruned_model

from helpers import FAMILY_CONFIGS, logits, tiny_calibration, tiny_model

FAMILIES = list(FAMILY_CONFIGS)
AXES = {
    "hidden": dict(hidden_size=36),
    "mlp": dict(intermediate_size=40),
    "heads": dict(num_attention_heads=4),
    "kv_heads": dict(num_attention_heads=3, num_key_value_heads=1),
    "all": dict(hidden_size=24, intermediate_size=40, num_attention_heads=4),
}


def non_embedding_params_by_formula(c, attention_bias=False, mlp_bias=False, qkv_bias=False, qk_norm=False):
    h, kv, d, i, hd = c.num_attention_heads, c.num_key_value_heads, c.hidden_size, c.intermediate_size, c.head_dim
    attention = d * h * hd + 2 * d * kv * hd + h * hd * d
    if attention_bias:
        attention += h * hd + 2 * kv * hd + d
    if qkv_bias:
        attention += h * hd + 2 * kv * hd
    if qk_norm:
        attention += 2 * hd
    mlp = 3 * d * i + ((2 * i + d) if mlp_bias else 0)
    return c.num_hidden_layers * (attention + mlp + 2 * d) + d


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("axis", list(AXES))
def test_width_prune_reloads_with_identical_logits(family, axis, tmp_path, input_ids):
    model = tiny_model(family)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    config = PruningConfig(**AXES[axis])
    prune_model(model, config, scores)
    expected = logits(model, input_ids)
    save_pruned_model(model, tmp_path / "out", pruning_config=config, scores=scores)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(logits(reloaded, input_ids), expected)
    shape = model_shape(reloaded)
    for key, value in AXES[axis].items():
        assert getattr(shape, key) == value
    assert reloaded.config.head_dim == 16  # kept when hidden shrinks
    assert (tmp_path / "out" / "pruning_config.json").is_file()
    assert not list(tmp_path.glob(".*partial*"))
    generated = reloaded.generate(input_ids[:1, :4], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 8)


@pytest.mark.parametrize(
    "family, extra, expect",
    [
        ("llama", dict(attention_bias=True, mlp_bias=True), dict(attention_bias=True, mlp_bias=True)),
        ("qwen2", {}, dict(qkv_bias=True)),
        ("qwen3", {}, dict(qk_norm=True)),
        ("mistral", {}, {}),
    ],
)
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_formula(family, extra, expect, tied, tmp_path, input_ids):
    model = tiny_model(family, tie_word_embeddings=tied, **extra)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    prune_model(
        model, PruningConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4, num_hidden_layers=3), scores
    )
    shape = model_shape(model)
    assert shape.non_embedding_params == non_embedding_params_by_formula(model.config, **expect)
    embeddings = model.config.vocab_size * 24 * (1 if tied else 2)
    assert shape.params == shape.non_embedding_params + embeddings
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    expected = logits(model, input_ids)
    save_pruned_model(model, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(logits(reloaded, input_ids), expected)
    assert model_shape(reloaded) == shape


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_is_identity(family, input_ids):
    model = tiny_model(family)
    before = logits(model, input_ids)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    prune_model(
        model,
        PruningConfig(
            hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=4
        ),
        scores,
    )
    assert torch.equal(logits(model, input_ids), before)


def neuron_reference_ranking(model, calibration, selection: str, scores) -> list[torch.Tensor]:
    """Per layer, the neuron ranking each selection defines, computed straight from its definition:
    Minitron's activation scores as given, or E[a²] over the real tokens times ||down_proj column||²."""
    if selection == "activation":
        return list(scores.neurons)
    rankings = []
    for layer in model.model.layers:
        captured = []
        hook = layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, out=captured: out.append(a[0][0]))
        with torch.no_grad():
            for sample in calibration.samples:
                model(input_ids=sample[None])
        hook.remove()
        mean_square = torch.cat(captured).double().pow(2).mean(0)
        rankings.append(mean_square * layer.mlp.down_proj.weight.double().pow(2).sum(0))
    return rankings


@pytest.mark.parametrize("family, selection", [("llama", "energy"), ("llama", "activation"), ("gemma3", "energy")])
def test_neuron_pruning_equals_zeroing_them_in_the_original(family, selection, input_ids):
    model = tiny_model(family)
    calibration = tiny_calibration(padded=True)
    scores = estimate_importance(model, calibration_data=calibration, batch_size=4, progress=False)
    reference = copy.deepcopy(model)
    rankings = neuron_reference_ranking(reference, calibration, selection, scores)
    pruned = prune_model(model, PruningConfig(intermediate_size=50, neuron_selection=selection), scores)
    with torch.no_grad():
        for layer, ranking in zip(reference.model.layers, rankings, strict=True):
            kept = torch.topk(ranking, 50).indices
            removed = torch.ones(80, dtype=torch.bool)
            removed[kept] = False
            layer.mlp.down_proj.weight[:, removed] = 0
    torch.testing.assert_close(logits(pruned, input_ids), logits(reference, input_ids), rtol=1e-5, atol=1e-5)


def test_the_two_neuron_selections_disagree_and_energy_needs_activation_statistics():
    """Energy weighs each neuron by the weights it is read through: the neuron of least activation, read
    through a down_proj column 100 times larger, writes much into the residual stream, and only energy
    keeps it (its activation, the input of down_proj, does not change)."""
    from hf_minitron.importance import magnitude_importance

    model = tiny_model("llama")
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    weakest = int(scores.neurons[0].argmin())
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, weakest] *= 100
    rescaled = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    energy = prune_model(copy.deepcopy(model), PruningConfig(intermediate_size=40), rescaled)
    activation = prune_model(
        copy.deepcopy(model), PruningConfig(intermediate_size=40, neuron_selection="activation"), rescaled
    )
    column = model.model.layers[0].mlp.down_proj.weight[:, weakest]
    assert int(rescaled.neurons[0].argmin()) == weakest

    def keeps_it(student) -> bool:
        return any(torch.equal(kept, column) for kept in student.model.layers[0].mlp.down_proj.weight.t())

    assert keeps_it(energy) and not keeps_it(activation)
    with pytest.raises(MinitronError, match="neuron_selection 'energy' needs"):
        prune_model(copy.deepcopy(model), PruningConfig(intermediate_size=40), magnitude_importance(model))
    with pytest.raises(MinitronError, match="Unknown neuron_selection"):
        PruningConfig(intermediate_size=40, neuron_selection="wanda")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_head_pruning_is_even_per_group_and_equals_zeroing_heads(family, input_ids):
    model = tiny_model(family)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    reference = copy.deepcopy(model)
    pruned = prune_model(model, PruningConfig(num_attention_heads=4), scores)  # 3 → 2 heads in each of 2 groups
    assert pruned.model.layers[0].self_attn.num_key_value_groups == 2
    with torch.no_grad():
        for layer_index, layer in enumerate(reference.model.layers):
            for group in range(2):
                heads = scores.heads[layer_index, group * 3 : group * 3 + 3]
                weakest = group * 3 + int(torch.argmin(heads))
                layer.self_attn.o_proj.weight[:, weakest * 16 : (weakest + 1) * 16] = 0
    torch.testing.assert_close(logits(pruned, input_ids), logits(reference, input_ids), rtol=1e-5, atol=1e-5)


def test_kv_group_pruning_removes_whole_groups(input_ids):
    model = tiny_model("llama")
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    reference = copy.deepcopy(model)
    prune_model(model, PruningConfig(num_attention_heads=3, num_key_value_heads=1), scores)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 48)
    with torch.no_grad():
        for layer_index, layer in enumerate(reference.model.layers):
            group_scores = scores.heads[layer_index].view(2, 3).sum(1)
            dropped = int(torch.argmin(group_scores))
            layer.self_attn.o_proj.weight[:, dropped * 48 : (dropped + 1) * 48] = 0
    torch.testing.assert_close(logits(model, input_ids), logits(reference, input_ids), rtol=1e-5, atol=1e-5)


def test_head_residual_merge_follows_the_formula():
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=1, hidden_size=48)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    o_before = model.model.layers[0].self_attn.o_proj.weight.detach().clone()
    prune_model(model, PruningConfig(num_attention_heads=2, head_residual_merge=True), scores)
    order = torch.argsort(scores.heads[0], descending=True).tolist()  # head_1 … head_4 of the paper
    # L=4 heads cut to K=2: i in [1, 2] pairs with 2K−i+1 = 4, 3.
    merged = {
        order[0]: 2 * q_before[order[0] * 16 : order[0] * 16 + 16] - q_before[order[3] * 16 : order[3] * 16 + 16],
        order[1]: 2 * q_before[order[1] * 16 : order[1] * 16 + 16] - q_before[order[2] * 16 : order[2] * 16 + 16],
    }
    kept = sorted(order[:2])
    q_after = model.model.layers[0].self_attn.q_proj.weight
    o_after = model.model.layers[0].self_attn.o_proj.weight
    for slot, head in enumerate(kept):
        torch.testing.assert_close(q_after[slot * 16 : slot * 16 + 16], merged[head])
        partner = order[3] if head == order[0] else order[2]
        expected_o = 2 * o_before[:, head * 16 : head * 16 + 16] - o_before[:, partner * 16 : partner * 16 + 16]
        torch.testing.assert_close(o_after[:, slot * 16 : slot * 16 + 16], expected_o)
