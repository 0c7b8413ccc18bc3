"""Depth pruning: the right layers go, the config follows, the KV cache still works."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import (
    ImportanceScores,
    PruningConfig,
    estimate_importance,
    load_model,
    prune_model,
    save_pruned_model,
)
from hf_minitron.layers import skipped_layers
from hf_minitron.model_folder import read_record

from helpers import FAMILY_CONFIGS, logits, tiny_calibration, tiny_model


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_explicit_drop_equals_skipping_and_reloads(family, tmp_path, input_ids):
    model = tiny_model(family)
    with skipped_layers(model, [1, 2]):
        reference = logits(model, input_ids)
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4  # restored
    prune_model(model, PruningConfig(layers_to_drop=[1, 2]))
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    torch.testing.assert_close(logits(model, input_ids), reference, rtol=0, atol=0)
    save_pruned_model(model, tmp_path / "d")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "d").eval()
    assert reloaded.config.num_hidden_layers == 2
    assert read_record(tmp_path / "d")["dropped_layers"] == [1, 2]  # beside config.json, not in it
    assert load_model(str(tmp_path / "d")).config.minitron_pruning["dropped_layers"] == [1, 2]
    assert torch.equal(logits(reloaded, input_ids), reference)
    # Generation with a KV cache addresses layers by layer_idx: cached and uncached must agree.
    cached = reloaded.generate(input_ids[:1, :5], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    uncached = reloaded.generate(
        input_ids[:1, :5], max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False
    )
    assert torch.equal(cached, uncached)


def test_per_layer_config_lists_follow_the_layers(tmp_path):
    layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=8, layer_types=layer_types)
    prune_model(model, PruningConfig(layers_to_drop=[0]))
    assert model.config.layer_types == layer_types[1:]
    save_pruned_model(model, tmp_path / "q")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert reloaded.config.layer_types == layer_types[1:]


def test_block_importance_drops_the_least_important_layers():
    model = tiny_model("llama", num_hidden_layers=6)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    prune_model(model, PruningConfig(num_hidden_layers=4, layer_selection="block_importance"), scores)
    expected = sorted(torch.argsort(scores.block_importance)[:2].tolist())
    assert model.config.minitron_pruning["dropped_layers"] == expected


def test_lm_loss_selection_drops_the_best_contiguous_block():
    model = tiny_model("llama", num_hidden_layers=6)
    scores = estimate_importance(
        model, calibration_data=tiny_calibration(), batch_size=4, progress=False, block_lm_loss_sizes=[3]
    )
    assert scores.block_lm_loss[3].shape == (4,)
    start = int(scores.block_lm_loss[3].argmin())
    prune_model(model, PruningConfig(num_hidden_layers=3, layer_selection="lm_loss"), scores)
    assert model.config.minitron_pruning["dropped_layers"] == [start, start + 1, start + 2]


def test_depth_and_width_together(tmp_path, input_ids):
    model = tiny_model("qwen3", num_hidden_layers=5)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    prune_model(
        model, PruningConfig(num_hidden_layers=3, hidden_size=36, intermediate_size=40, num_attention_heads=4), scores
    )
    expected = logits(model, input_ids)
    save_pruned_model(model, tmp_path / "wd")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "wd").eval()
    assert torch.equal(logits(reloaded, input_ids), expected)
    assert reloaded.model.layers[2].mlp.up_proj.weight.shape == (40, 36)
    assert reloaded.model.layers[2].self_attn.q_proj.weight.shape == (64, 36)


def test_downstream_selection_picks_the_inert_block(tmp_path):
    """Layers 2-3 of 6 are made inert; gold answers are the full model's own picks (100% accuracy).

    Removing the inert block keeps every answer; removing any other block changes some.
    """
    from hf_minitron.evaluation import score_task

    from helpers import char_tokenizer

    model = tiny_model("llama", num_hidden_layers=6, seed=5)
    with torch.no_grad():
        for layer in model.model.layers[2:4]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    tokenizer = char_tokenizer()
    docs = [
        {"query": f"Item {i}: the answer is", "choices": [" red", " green", " blue", " gold"], "gold": 0}
        for i in range(40)
    ]
    from hf_minitron.evaluation.tasks import loglikelihoods, requests_for

    for doc in docs:  # gold := what the full model picks
        scores = loglikelihoods(model, tokenizer, requests_for(doc))
        doc["gold"] = max(range(4), key=scores.__getitem__)
    assert score_task(model, tokenizer, docs, progress=False).acc == 1.0
    scores = estimate_importance(
        model,
        tokenizer,
        ["Some calibration text here. " * 8] * 4,
        seq_len=32,
        num_samples=4,
        progress=False,
        downstream_task=docs,
        block_accuracy_sizes=[2],
        block_lm_loss_sizes=[2],
    )
    accuracy = scores.block_accuracy[2]
    assert accuracy[2] == 1.0 and sorted(accuracy.tolist())[-2] < 1.0
    prune_model(model, PruningConfig(num_hidden_layers=4, layer_selection="downstream"), scores)
    assert model.config.minitron_pruning["dropped_layers"] == [2, 3]
    scores.save(tmp_path / "s")
    assert (tmp_path / "s" / "block_removal.png").read_bytes()[:4] == b"\x89PNG"
    assert ImportanceScores.load(tmp_path / "s").block_accuracy[2].tolist() == accuracy.tolist()


@pytest.mark.parametrize(
    "rows, lm_loss, expected",
    [
        (None, [3.0, 1.0, 2.0, 0.5, 4.0], [0]),  # rows unknown (older scores): the best accuracy alone
        (100, [3.0, 1.0, 2.0, 0.5, 4.0], [0]),  # standard error 0.04: blocks 1 and 2 are 0.05 and 0.06 behind
        (25, [3.0, 1.0, 2.0, 0.5, 4.0], [1]),  # standard error 0.08: blocks 0-2 tie, 1 has the least LM loss
        (25, None, [0]),  # no LM loss to choose by: the best accuracy
        (25, [3.0, 3.0, 3.0, 0.5, 4.0], [0]),  # equal LM loss: the first of the tied blocks
    ],
)
def test_downstream_selection_treats_accuracies_within_a_standard_error_as_tied(rows, lm_loss, expected):
    """One-standard-error rule: among blocks whose accuracy is within sqrt(p(1-p)/rows) of the best p,
    the least LM loss wins; block 3 has the least LM loss of all but is far behind on the task."""
    model = tiny_model("llama", num_hidden_layers=6, seed=3)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), progress=False)
    scores.block_accuracy = {2: torch.tensor([0.80, 0.75, 0.74, 0.40, 0.70])}
    scores.block_lm_loss = {2: torch.tensor(lm_loss)} if lm_loss else {}
    scores.metadata["downstream_rows"] = rows
    # sqrt(0.8 * 0.2 / 100) = 0.04 and sqrt(0.8 * 0.2 / 25) = 0.08
    prune_model(model, PruningConfig(num_hidden_layers=4, layer_selection="downstream"), scores)
    dropped = model.config.minitron_pruning["dropped_layers"]
    assert dropped[:1] == expected and len(dropped) == 2


@pytest.mark.parametrize("family", ["llama", "qwen2-sliding"])
def test_block_lm_loss_sweep_equals_the_loss_of_each_pruned_model(family):
    import copy

    from hf_minitron.evaluation.perplexity import mean_lm_loss
    from hf_minitron.importance.depth import measure_block_lm_loss

    if family == "qwen2-sliding":
        types = ["full_attention", "sliding_attention"] * 3
        model = tiny_model("qwen2", num_hidden_layers=6, use_sliding_window=True, sliding_window=8, layer_types=types)
    else:
        model = tiny_model(family, num_hidden_layers=6)
    calibration = tiny_calibration(num_samples=5, padded=True)
    base, losses = measure_block_lm_loss(model, calibration, [2, 4], batch_size=2, progress=False)
    assert base == pytest.approx(mean_lm_loss(model, calibration, batch_size=2), rel=1e-5)
    assert [len(losses[k]) for k in (2, 4)] == [5, 3]
    for k, per_start in losses.items():
        for start, loss in enumerate(per_start.tolist()):
            pruned = prune_model(copy.deepcopy(model), PruningConfig(layers_to_drop=list(range(start, start + k))))
            assert loss == pytest.approx(mean_lm_loss(pruned, calibration, batch_size=2), rel=1e-5), (k, start)


def test_block_accuracy_sweep_equals_scoring_each_pruned_model():
    """The accuracy sweep walks the decoder once per batch; each block's accuracy (and the whole model's)
    is what score_task gives the model with that block pruned, on a task where blocks disagree."""
    import copy

    from hf_minitron.evaluation import score_task
    from hf_minitron.evaluation.tasks import loglikelihoods, requests_for
    from hf_minitron.importance.depth import measure_block_accuracy

    from helpers import char_tokenizer

    model, tokenizer = tiny_model("llama", num_hidden_layers=6, seed=7), char_tokenizer()
    docs = [{"query": f"Row {i} says", "choices": [" red", " green", " blue"], "gold": i % 3} for i in range(30)] + [
        {"context_options": [f"Ann {i}", f"Bob {i}!"], "continuation": "left early.", "gold": i % 2} for i in range(6)
    ]
    choices, partial = docs[:30], docs[30:]
    for task in (choices, partial):
        base, accuracy = measure_block_accuracy(model, tokenizer, task, [1, 3], batch_size=7, progress=False)
        assert base == score_task(model, tokenizer, task, progress=False).acc
        assert [len(accuracy[k]) for k in (1, 3)] == [6, 4]
        for k, per_start in accuracy.items():
            for start, value in enumerate(per_start.tolist()):
                pruned = prune_model(copy.deepcopy(model), PruningConfig(layers_to_drop=list(range(start, start + k))))
                expected = score_task(pruned, tokenizer, task, batch_size=7, progress=False).acc
                assert value == pytest.approx(expected, abs=1e-6), (k, start)  # stored as float32
    accuracies = measure_block_accuracy(model, tokenizer, choices, [1], progress=False)[1][1]
    assert len(set(accuracies.tolist())) > 1  # the blocks are told apart: the comparison above is not vacuous
    assert loglikelihoods(model, tokenizer, requests_for(choices[0]))  # the scorer the sweep shares


def test_downstream_scores_measure_lm_loss_only_for_the_blocks_tied_in_accuracy():
    """The tie-break needs LM loss only where accuracy ties: those blocks get what the full sweep gives them,
    the rest NaN, and an ``lm_loss`` selection refuses such scores instead of reading the NaNs."""
    import copy

    from hf_minitron.errors import MinitronError
    from hf_minitron.evaluation.tasks import loglikelihoods, requests_for
    from hf_minitron.importance.depth import measure_block_lm_loss, tied_blocks

    from helpers import char_tokenizer

    model, tokenizer = tiny_model("llama", num_hidden_layers=6, seed=7), char_tokenizer()
    docs = [{"query": f"Row {i} says", "choices": [" red", " green", " blue"]} for i in range(60)]
    for doc in docs:  # the answers the whole model picks: removing a layer then costs some of them, or none
        scores = loglikelihoods(model, tokenizer, requests_for({**doc, "gold": 0}))
        doc["gold"] = max(range(3), key=scores.__getitem__)
    calibration = tiny_calibration(num_samples=4)
    scores = estimate_importance(
        model, tokenizer, calibration, downstream_task=docs, block_accuracy_sizes=[1], batch_size=2, progress=False
    )
    tied = tied_blocks(scores.block_accuracy[1], len(docs))
    assert 1 < len(tied) < 6  # blocks tie and others do not: the partial sweep and the choice are both tested
    base, full = measure_block_lm_loss(model, calibration, [1], batch_size=2, progress=False)
    assert scores.base_lm_loss == pytest.approx(base)
    for start, loss in enumerate(scores.block_lm_loss[1].tolist()):
        if start in tied:
            assert loss == pytest.approx(float(full[1][start]))
        else:
            assert loss != loss  # NaN
    expected = min(tied, key=lambda start: float(full[1][start]))
    selection = PruningConfig(num_hidden_layers=5, layer_selection="downstream")
    downstream = prune_model(copy.deepcopy(model), selection, scores)
    assert downstream.config.minitron_pruning["dropped_layers"] == [expected]
    with pytest.raises(MinitronError, match="only for the blocks tied in task accuracy"):
        prune_model(model, PruningConfig(num_hidden_layers=5, layer_selection="lm_loss"), scores)
    # Asked for both, every block gets its LM loss.
    both = estimate_importance(
        model,
        tokenizer,
        calibration,
        downstream_task=docs,
        block_accuracy_sizes=[1],
        block_lm_loss_sizes=[1],
        batch_size=2,
        progress=False,
    )
    torch.testing.assert_close(both.block_lm_loss[1], full[1])
