"""Importance: matches a plain full-tensor reference, ignores padding, and finds inert units."""

import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron import ImportanceScores, MinitronError, PruningConfig, estimate_importance, prune_model
from hf_minitron.importance.aggregation import AGGREGATIONS, SampleAccumulator, reduce_sequence

from helpers import tiny_calibration, tiny_model


def reference_reduce(values, lengths, seq, batch):
    """Straightforward: loop over samples, slice off padding, reduce with plain torch ops."""
    per_sample = []
    for sample, n in zip(values, lengths, strict=True):
        v = sample[:n].double()
        per_sample.append({"mean": v.mean(0), "l2": v.norm(dim=0), "var": v.var(0, unbiased=False)}[seq])
    stacked = torch.stack(per_sample)
    return {"mean": stacked.mean(0), "l2": stacked.norm(dim=0), "var": stacked.var(0, unbiased=False)}[batch]


def capture(model, calibration, module_name, pre=True):
    """Full activations of one module for every sample (no padding), the reference's input."""
    captured = []
    module = model.get_submodule(module_name)
    hook = (
        module.register_forward_pre_hook(lambda m, a: captured.append(a[0][0]))
        if pre
        else module.register_forward_hook(lambda m, a, o: captured.append(o[0]))
    )
    with torch.no_grad():
        for sample in calibration.samples:
            model(input_ids=sample[None])
    hook.remove()
    return captured


@pytest.mark.parametrize("batch_agg, seq_agg", list(itertools.product(AGGREGATIONS, AGGREGATIONS)))
def test_streamed_padded_scores_equal_a_full_tensor_reference(batch_agg, seq_agg):
    model = tiny_model("llama")
    calibration = tiny_calibration(num_samples=7, padded=True)
    scores = estimate_importance(
        model,
        calibration_data=calibration,
        batch_size=3,
        batch_aggregation=batch_agg,
        seq_aggregation=seq_agg,
        progress=False,
    )
    lengths = [len(s) for s in calibration.samples]
    neurons = capture(model, calibration, "model.layers.2.mlp.down_proj")
    expected = reference_reduce([a.abs() for a in neurons], lengths, seq_agg, batch_agg)
    torch.testing.assert_close(scores.neurons[2].double(), expected, rtol=1e-4, atol=1e-6)
    heads = capture(model, calibration, "model.layers.1.self_attn.o_proj")
    expected = reference_reduce([a.view(len(a), 6, 16).norm(dim=-1) for a in heads], lengths, seq_agg, batch_agg)
    torch.testing.assert_close(scores.heads[1].double(), expected, rtol=1e-4, atol=1e-6)
    norms = [
        capture(model, calibration, f"model.layers.{i}.{n}", pre=False)
        for i in range(4)
        for n in ("input_layernorm", "post_attention_layernorm")
    ]
    expected = sum(reference_reduce([a.abs() for a in acts], lengths, seq_agg, batch_agg) for acts in norms)
    torch.testing.assert_close(scores.channels.double(), expected, rtol=1e-4, atol=1e-5)


def test_neuron_energy_is_the_mean_squared_activation_over_real_tokens():
    model = tiny_model("llama")
    calibration = tiny_calibration(num_samples=7, padded=True)
    scores = estimate_importance(model, calibration_data=calibration, batch_size=3, progress=False)
    lengths = [len(s) for s in calibration.samples]
    for layer in (0, 2):
        activations = capture(model, calibration, f"model.layers.{layer}.mlp.down_proj")
        tokens = torch.cat([a[:n] for a, n in zip(activations, lengths, strict=True)]).double()
        torch.testing.assert_close(scores.neuron_energy[layer].double(), tokens.pow(2).mean(0), rtol=1e-4, atol=1e-8)


def test_padding_never_counts():
    model = tiny_model("qwen2")
    calibration = tiny_calibration(num_samples=5, padded=True)
    batched = estimate_importance(model, calibration_data=calibration, batch_size=5, progress=False)
    one_by_one = estimate_importance(model, calibration_data=calibration, batch_size=1, progress=False)
    for name in ("heads", "neurons", "channels_per_layer", "block_importance"):
        torch.testing.assert_close(getattr(batched, name), getattr(one_by_one, name), rtol=1e-4, atol=1e-5)


def test_aggregations_rank_as_defined():
    # Unit 0: steady magnitude 2. Unit 1: mostly 0 with one spike of 10 (same sum, 2 × 5 tokens = 10).
    values = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 10.0]]])
    mask = torch.ones(1, 5)
    mean = reduce_sequence(values, mask, "mean")[0]
    l2 = reduce_sequence(values, mask, "l2")[0]
    var = reduce_sequence(values, mask, "var")[0]
    assert mean[0] == mean[1]  # equal means: a tie
    assert l2[1] > l2[0]  # sqrt(100) > sqrt(20): the spike wins
    assert var[1] > var[0] == 0  # only the spiky unit varies
    acc = SampleAccumulator()
    acc.add(torch.tensor([[1.0, 3.0], [3.0, 3.0]]))
    torch.testing.assert_close(acc.result("mean"), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(acc.result("l2"), torch.tensor([10.0, 18.0]).sqrt())
    torch.testing.assert_close(acc.result("var"), torch.tensor([1.0, 0.0]))


def test_inert_units_score_lowest():
    model = tiny_model("llama", num_attention_heads=6, num_key_value_heads=6)  # MHA: a head can be silenced alone
    with torch.no_grad():
        layer = model.model.layers[1]
        layer.mlp.gate_proj.weight[17] = 0  # neuron 17 of layer 1 never fires
        layer.self_attn.v_proj.weight[4 * 16 : 5 * 16] = 0  # head 4 of layer 1 outputs zeros
        for block in model.model.layers:  # channel 5 is zeroed by every norm
            block.input_layernorm.weight[5] = 0
            block.post_attention_layernorm.weight[5] = 0
        inert = model.model.layers[2]  # layer 2 adds nothing to the residual stream
        inert.self_attn.o_proj.weight.zero_()
        inert.mlp.down_proj.weight.zero_()
    scores = estimate_importance(
        model, calibration_data=tiny_calibration(), batch_size=4, progress=False, block_lm_loss_sizes=[1]
    )
    assert int(scores.neurons[1].argmin()) == 17 and scores.neurons[1, 17] == 0
    assert int(scores.heads[1].argmin()) == 4 and scores.heads[1, 4] == 0
    assert int(scores.channels.argmin()) == 5
    assert int(scores.block_importance.argmin()) == 2 and scores.block_importance[2].abs() < 1e-6
    # Skipping the inert layer leaves the loss exactly as it was; skipping any other changes it.
    changes = (scores.block_lm_loss[1] - scores.base_lm_loss).abs()
    assert changes[2] < 1e-5 and all(changes[i] > 1e-3 for i in (0, 1, 3))


def test_block_search_runs_on_the_first_samples_the_lm_loss_selections_need():
    from hf_minitron.importance.depth import measure_block_lm_loss
    from hf_minitron.pruning.plan import block_lm_loss_sizes

    model, calibration = tiny_model("llama"), tiny_calibration()
    configs = [
        PruningConfig(num_hidden_layers=2, layer_selection="lm_loss"),
        PruningConfig(num_hidden_layers=3),  # block importance: no sweep
        PruningConfig(intermediate_size=32),
    ]
    assert block_lm_loss_sizes(4, configs) == [2]
    scores = estimate_importance(
        model,
        calibration_data=calibration,
        batch_size=4,
        progress=False,
        block_lm_loss_sizes=[2],
        block_search_samples=2,
    )
    base, blocks = measure_block_lm_loss(model, calibration.first(2), [2], batch_size=4, progress=False)
    assert scores.base_lm_loss == pytest.approx(base) and torch.allclose(scores.block_lm_loss[2], blocks[2])
    assert len(calibration.first(2)) == 2 and calibration.first(None) is calibration
    with pytest.raises(MinitronError, match="block_search_samples must be a positive integer"):
        estimate_importance(model, calibration_data=calibration, progress=False, block_search_samples=0)


def test_scores_save_load_and_plot(tmp_path):
    model = tiny_model("mistral")
    scores = estimate_importance(
        model, calibration_data=tiny_calibration(), batch_size=4, progress=False, block_lm_loss_sizes=[1, 2]
    )
    scores.save(tmp_path / "s")
    loaded = ImportanceScores.load(tmp_path / "s")
    for name in ("heads", "neurons", "neuron_energy", "channels_per_layer", "block_importance"):
        assert torch.equal(getattr(loaded, name), getattr(scores, name))
    assert sorted(loaded.block_lm_loss) == [1, 2] and loaded.base_lm_loss == pytest.approx(scores.base_lm_loss)
    assert loaded.metadata["batch_aggregation"] == "l2" and loaded.metadata["num_samples"] == 6
    png = scores.plot(tmp_path / "s" / "importance.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MinitronError, match="another shape"):
        loaded.check_matches(tiny_model("mistral", num_hidden_layers=3))


def test_works_in_bfloat16():
    model = tiny_model("qwen3").to(torch.bfloat16)
    scores = estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    assert scores.neurons.dtype == torch.float32 and torch.isfinite(scores.neurons).all()
    reference = estimate_importance(
        tiny_model("qwen3"), calibration_data=tiny_calibration(), batch_size=4, progress=False
    )
    # bf16 activations rank neurons much as fp32 does.
    top_bf16 = set(scores.neurons[0].topk(20).indices.tolist())
    top_fp32 = set(reference.neurons[0].topk(20).indices.tolist())
    assert len(top_bf16 & top_fp32) >= 15


def test_dispatched_model_with_offloaded_layers_gives_the_same_scores(tmp_path):
    """accelerate's dispatch hooks (device_map, here with layers offloaded to disk) coexist with ours."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    calibration = tiny_calibration(padded=True)
    reference = estimate_importance(model, calibration_data=calibration, batch_size=3, progress=False)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(4)})
    dispatched = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert dispatched.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    scores = estimate_importance(dispatched, calibration_data=calibration, batch_size=3, progress=False)
    for name in ("heads", "neurons", "neuron_energy", "channels_per_layer", "block_importance"):
        torch.testing.assert_close(getattr(scores, name), getattr(reference, name), rtol=1e-5, atol=1e-5)
    with pytest.raises(MinitronError, match="offloaded"):
        prune_model(dispatched, PruningConfig(intermediate_size=40), scores)


def test_magnitude_baseline_scores_zeroed_units_lowest():
    from hf_minitron.importance import magnitude_importance

    model = tiny_model("llama")
    with torch.no_grad():
        layer = model.model.layers[1]
        layer.mlp.gate_proj.weight[7] = 0
        layer.mlp.up_proj.weight[7] = 0
        layer.mlp.down_proj.weight[:, 7] = 0
        layer.self_attn.q_proj.weight[16:32] = 0
        layer.self_attn.o_proj.weight[:, 16:32] = 0
    scores = magnitude_importance(model)
    assert int(scores.neurons[1].argmin()) == 7 and scores.neurons[1, 7] == 0
    assert int(scores.heads[1].argmin()) == 1 and scores.heads[1, 1] == 0
    # No activations were seen: the weight norms rank the neurons ("activation" reads scores.neurons).
    config = PruningConfig(hidden_size=36, intermediate_size=40, neuron_selection="activation")
    assert prune_model(model, config, scores).config.hidden_size == 36


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_fused_reductions_equal_the_eager_ones(how):
    """The compiled kernels CUDA uses compute what the eager reductions compute (here compiled for the CPU)."""
    from hf_minitron.importance.aggregation import FusedReductions, token_magnitudes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 32, generator=g)
    mask = torch.ones(3, 10)
    mask[1, 7:] = 0
    fused = FusedReductions()
    for head_dim in (None, 8):
        sums = fused.magnitude_sums(x, mask, how, head_dim)
        if sums is None:
            pytest.skip(f"torch.compile does not run here: {fused.failure}")
        accumulator = SampleAccumulator()
        accumulator.add(reduce_sequence(token_magnitudes(x, head_dim), mask, how))
        torch.testing.assert_close(sums.double(), accumulator.sums, rtol=1e-5, atol=1e-6)
    after = x + 0.3 * torch.randn(3, 10, 32, generator=g)
    expected = (torch.nn.functional.cosine_similarity(x, after, dim=-1) * mask).sum()
    torch.testing.assert_close(fused.cosine_sum(x, after, mask), expected, rtol=1e-5, atol=1e-6)


def test_estimate_with_fused_reductions_matches_the_eager_run(monkeypatch):
    from hf_minitron.importance import estimate

    model = tiny_model("llama")
    calibration = tiny_calibration(num_samples=7, padded=True)
    eager = estimate_importance(model, calibration_data=calibration, batch_size=3, progress=False)
    monkeypatch.setattr(estimate, "use_fused_reductions", lambda device: True)
    fused = estimate_importance(model, calibration_data=calibration, batch_size=3, progress=False)
    for name in ("heads", "neurons", "neuron_energy", "channels_per_layer", "block_importance"):
        torch.testing.assert_close(getattr(fused, name), getattr(eager, name), rtol=1e-5, atol=1e-6)
