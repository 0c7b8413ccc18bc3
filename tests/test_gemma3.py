"""Gemma 3 (text): what sets it apart from the Llama layout survives pruning, reconstruction and distillation.

The family-wide tests (test_pruning_width, test_reconstruction) already run Gemma 3 through every width
axis; here are the parts only Gemma has: the embedding multiplier that follows hidden_size, the
sliding / full attention pattern under depth pruning, sandwich norms in reconstruction, logit
softcapping, and the 262k vocabulary in the distillation loss.
"""

import copy
import dataclasses
import json

import datasets
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3Config

from hf_minitron import MinitronError, PruningConfig, estimate_importance, prune_model, save_pruned_model
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation.forward import enable_distillation_forward
from hf_minitron.distillation.losses.backends import auto_chunk_size
from hf_minitron.evaluation.perplexity import logprobs_from_hidden
from hf_minitron.families import family_for
from hf_minitron.reconstruction import ReconstructionConfig, reconstruct_model

from helpers import char_tokenizer, logits, tiny_calibration, tiny_model

SLIDING, FULL = "sliding_attention", "full_attention"


def scored(model):
    return estimate_importance(model, calibration_data=tiny_calibration(), batch_size=4, progress=False)


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_pruning_keeps_the_embedding_multiplier_of_the_original_width(tied, tmp_path, input_ids, monkeypatch):
    """The reference is the sliced model still multiplying its embeddings by sqrt(48), the width they were
    trained at. The pruned folder must compute that after a reload, where transformers uses sqrt(24)."""
    model = tiny_model("gemma3", tie_word_embeddings=tied)
    scores, config = scored(model), PruningConfig(hidden_size=24)

    with monkeypatch.context() as patch:  # slicing alone, as if the multiplier needed no care
        patch.setattr("hf_minitron.pruning.prune.fold_embedding_scale", lambda *args: None)
        reference = prune_model(copy.deepcopy(model), config, scores)
    save_pruned_model(reference, tmp_path / "unfolded")
    reference.model.embed_tokens.embed_scale.fill_(48**0.5)
    expected = logits(reference, input_ids)
    unfolded = AutoModelForCausalLM.from_pretrained(tmp_path / "unfolded").eval()
    assert not torch.allclose(logits(unfolded, input_ids), expected, atol=1e-3)  # what the fold is for

    pruned = prune_model(model, config, scores)
    torch.testing.assert_close(logits(pruned, input_ids), expected, rtol=1e-5, atol=1e-5)
    save_pruned_model(pruned, tmp_path / "folded")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded").eval()
    assert torch.equal(logits(reloaded, input_ids), logits(pruned, input_ids))
    assert reloaded.model.embed_tokens.embed_scale == pytest.approx(24**0.5)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tied


@pytest.mark.parametrize(
    "drop, kept_types",
    [
        ([1, 2], [SLIDING, SLIDING, SLIDING, FULL]),
        ([2, 5], [SLIDING] * 4),  # no full layer left: the model must still build and run
        ([0, 1, 3, 4], [FULL, FULL]),
    ],
)
def test_depth_pruning_keeps_each_layer_its_own_attention_type(drop, kept_types, tmp_path, input_ids):
    model = tiny_model("gemma3", num_hidden_layers=6)
    model.config.sliding_window_pattern = 3  # as Hub configs still carry it: true of the full model only
    assert model.config.layer_types == [SLIDING, SLIDING, FULL] * 2
    prune_model(model, PruningConfig(layers_to_drop=drop))
    assert model.config.layer_types == kept_types
    assert [layer.self_attn.is_sliding for layer in model.model.layers] == [t == SLIDING for t in kept_types]
    expected = logits(model, input_ids)
    save_pruned_model(model, tmp_path / "deep")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "deep").eval()
    assert reloaded.config.layer_types == kept_types
    saved = json.loads((tmp_path / "deep" / "config.json").read_text())
    assert not {"sliding_window_pattern", "_sliding_window_pattern"} & set(saved)  # it would describe other layers
    assert [layer.self_attn.is_sliding for layer in reloaded.model.layers] == [t == SLIDING for t in kept_types]
    assert torch.equal(logits(reloaded, input_ids), expected)


def test_width_and_depth_together_reload_with_identical_logits(tmp_path, input_ids):
    model = tiny_model("gemma3", num_hidden_layers=6)
    prune_model(
        model,
        PruningConfig(num_hidden_layers=4, hidden_size=24, intermediate_size=40, num_attention_heads=4),
        scored(model),
    )
    assert model.config.head_dim == 16  # Gemma's head_dim never follows hidden_size / heads
    expected = logits(model, input_ids)
    save_pruned_model(model, tmp_path / "both")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "both").eval()
    assert torch.equal(logits(reloaded, input_ids), expected)
    assert reloaded.model.layers[0].self_attn.q_norm.weight.shape == (16,)
    assert reloaded.model.layers[0].post_feedforward_layernorm.weight.shape == (24,)


def stream_errors(student, teacher, calibration) -> list[float]:
    """Per student layer: relative error of its output against the teacher's stream on the kept channels."""
    kept = student.config.minitron_pruning["kept_hidden_channels"]
    batch = next(iter(calibration.batches(len(calibration))))
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = student(**batch, output_hidden_states=True).hidden_states
        theirs = teacher(**batch, output_hidden_states=True).hidden_states
    errors = []
    for mine, target in zip(ours[1:-1], theirs[1:-1], strict=True):  # the last entry is after the final norm
        a, b = mine[mask], target[mask][:, kept]
        errors.append(float((a - b).pow(2).sum() / b.pow(2).sum()))
    return errors


def test_reconstruction_fits_through_the_sandwich_norms(monkeypatch):
    """Gemma normalises each branch's output before the residual add, so the projections are fitted on that
    norm's input. Every layer's output then follows the teacher better than after pruning alone, and better
    than fitting as if the output were added as is (the Llama rule), which ignores the norms' gains. Real
    Gemma gains spread widely across channels; so do these (0.2 … 3)."""
    teacher = tiny_model("gemma3")
    with torch.no_grad():
        for layer in teacher.model.layers:
            for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
                norm.weight.uniform_(-0.8, 2.0)
    calibration = tiny_calibration(num_samples=16, length=24)
    pruned = prune_model(
        copy.deepcopy(teacher),
        PruningConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4),
        scored(teacher),
    )
    settings = ReconstructionConfig(damping=0.01, final_norm=False)
    aware = copy.deepcopy(pruned)
    report = reconstruct_model(aware, teacher, calibration, config=settings, progress=False)
    for fit in [f[part] for f in report["layers"] for part in ("attention", "mlp") if part in f]:
        assert fit["error_after"] <= fit["error_before"] + 1e-9

    llama_rule = dataclasses.replace(family_for(teacher), attention_output_norm=None, mlp_output_norm=None)
    naive = copy.deepcopy(pruned)
    with monkeypatch.context() as patch:
        patch.setattr("hf_minitron.reconstruction.fits.family_for", lambda model: llama_rule)
        reconstruct_model(naive, teacher, calibration, config=settings, progress=False)
    errors = {
        name: stream_errors(m, teacher, calibration)
        for name, m in [("pruned", pruned), ("aware", aware), ("naive", naive)]
    }
    for layer, error in enumerate(errors["aware"]):
        assert error < errors["pruned"][layer] and error < errors["naive"][layer], errors


def test_distillation_trains_a_gemma3_student_at_the_real_vocabulary(tmp_path):
    """262,144 tokens, as in every Gemma 3: the chunked loss keeps one chunk's logits small and trains."""
    assert auto_chunk_size(262_144, torch.device("cpu")) * 262_144 * 4 <= 512 * 2**20
    assert auto_chunk_size(49_152, torch.device("cpu")) == 1024  # smaller vocabularies keep their chunk
    teacher = tiny_model("gemma3", seed=3, vocab_size=262_144)
    student = prune_model(
        copy.deepcopy(teacher),
        PruningConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=3),
        scored(teacher),
    )
    before = copy.deepcopy(student.state_dict())
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=32,
        intermediate_layer_pairs=["auto"],
    )
    texts = datasets.Dataset.from_dict({"text": [f"Sample {i}: the quick brown fox jumps." for i in range(8)]})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=texts, processing_class=char_tokenizer()
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = student.state_dict()
    changed = [name for name, value in before.items() if not torch.equal(value, after[name])]
    assert "model.layers.0.mlp.down_proj.weight" in changed


def test_softcapped_logits_are_scored_as_the_model_computes_them(input_ids):
    model = tiny_model("gemma3", final_logit_softcapping=2.0)
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids, output_hidden_states=True)
    assert out.logits.abs().max() < 2.0  # the cap is active
    mask = torch.ones_like(input_ids)
    sums, counts = logprobs_from_hidden(model, out.hidden_states[-1], input_ids, mask)
    assert float(-sums.sum() / counts.sum()) == pytest.approx(float(out.loss), rel=1e-5)
    with pytest.raises(MinitronError, match=r"final_logit_softcapping=2\.0"):
        enable_distillation_forward(model)


def test_a_multimodal_gemma3_config_is_refused_with_a_way_forward():
    config = Gemma3Config()
    assert config.model_type == "gemma3" and AutoConfig.for_model("gemma3_text").model_type == "gemma3_text"
    with pytest.raises(MinitronError, match=r"multimodal.*gemma3_text"):
        family_for(config)


def test_the_final_norm_refit_scales_gemma_gains_not_their_stored_offsets():
    """Gemma stores gain − 1; the fitted per-channel scale must land on the gain, so the student's normalised
    final state has exactly the error the fit reports."""
    teacher = tiny_model("gemma3")
    calibration = tiny_calibration(num_samples=8, length=24)
    student = prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=24), scored(teacher))
    settings = ReconstructionConfig(attention_output=False, mlp_output=False, damping=0.0)
    fit = reconstruct_model(student, teacher, calibration, config=settings, progress=False)["layers"][-1]
    assert fit["layer"] == "final_norm" and fit["error_after"] < fit["error_before"]
    kept = student.config.minitron_pruning["kept_hidden_channels"]
    batch = next(iter(calibration.batches(len(calibration))))
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ours = student(**batch, output_hidden_states=True).hidden_states[-1][mask]
        theirs = teacher(**batch, output_hidden_states=True).hidden_states[-1][mask][:, kept]
    error = float((ours - theirs).pow(2).sum() / theirs.pow(2).sum())
    assert error == pytest.approx(fit["error_after"], rel=1e-4)


def test_a_teacher_logit_cache_holds_the_capped_distribution(tmp_path):
    """Cached top-k targets come from the head's output: with a cap, it must be applied there too. Capped
    logits lie within ±cap, so every token's log-probability is within 2·cap of any other's."""
    from hf_minitron.distillation_data.logit_cache import TeacherLogitCache, cache_teacher_logits

    texts = datasets.Dataset.from_dict({"text": [f"Line {i}: some words to score." for i in range(4)]})
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to=[], max_length=32)
    spreads = {}
    for cap in (2.0, None):
        teacher = tiny_model("gemma3", final_logit_softcapping=cap)
        folder = tmp_path / f"cache-{cap}"
        cache_teacher_logits(teacher, texts, folder, args, tokenizer=char_tokenizer(), top_k=96, progress=False)
        cached, _ = TeacherLogitCache(folder).targets(list(range(len(texts))))
        spreads[cap] = float((cached.logprobs.max(-1).values - cached.logprobs.min(-1).values).max())
    assert spreads[2.0] <= 4.0 + 1e-2 < spreads[None]
