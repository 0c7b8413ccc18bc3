"""DistillationTrainer on tiny models: accumulation equals the large batch, resume, exports, bad input."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from hf_minitron import MinitronError, PruningConfig, estimate_importance, prune_model
from hf_minitron.distillation import DistillationConfig, DistillationTrainer, NonFiniteLossError
from hf_minitron.distillation.forward import PROJECTION

from helpers import PLAIN_TRAINING, char_tokenizer, tiny_calibration, tiny_model

# Eight texts of different lengths, so padded batches hold padding.
TEXTS = [("The quick brown fox jumps over the lazy dog. " * 3)[: 30 + 9 * i] for i in range(8)]


def dataset(n=8):
    return datasets.Dataset.from_dict({"text": (TEXTS * 4)[:n]})


def width_student(teacher):
    scores = estimate_importance(teacher, calibration_data=tiny_calibration(), batch_size=4, progress=False)
    return prune_model(
        tiny_model("llama"), PruningConfig(hidden_size=36, intermediate_size=48, num_hidden_layers=3), scores
    )


def config(tmp_path, **overrides):
    settings = dict(
        **PLAIN_TRAINING,
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=1,
        learning_rate=0.5,
        dataloader_drop_last=False,
    )
    settings.update(overrides)
    return DistillationConfig(**settings)


def train(tmp_path, teacher, student, **overrides):
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path, **overrides),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(divergence="jsd", jsd_beta=0.3, ce_weight=0.5, temperature=2.0),
        dict(intermediate_layer_pairs=["auto"], intermediate_alpha="0.7", embedding_loss=True),
        dict(intermediate_layer_pairs=["auto"], max_steps=3),
    ],
    ids=["forward_kl", "jsd+ce", "intermediate-fixed-alpha", "intermediate-dynamic-alpha"],
)
def test_gradient_accumulation_equals_the_large_batch(tmp_path, settings):
    teacher = tiny_model("llama", seed=3)
    big = train(tmp_path / "a", teacher, width_student(teacher), per_device_train_batch_size=8, **settings)
    small = train(
        tmp_path / "b",
        teacher,
        width_student(teacher),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        **settings,
    )
    assert small.state.log_history[0]["loss"] == pytest.approx(big.state.log_history[0]["loss"], rel=1e-5)
    for (name, a), (_, b) in zip(big.model.named_parameters(), small.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The teacher stays frozen and in eval mode.
    assert not big.teacher.training and not any(p.requires_grad for p in big.teacher.parameters())


def test_padding_never_counts(tmp_path):
    """Appending pad tokens to a batch changes nothing: the loss is over real tokens only."""
    teacher = tiny_model("llama", seed=3)
    one = train(tmp_path / "a", teacher, width_student(teacher), per_device_train_batch_size=8)
    padded = train(
        tmp_path / "b", teacher, width_student(teacher), per_device_train_batch_size=8, pad_to_multiple_of=64
    )
    assert padded.state.log_history[0]["loss"] == pytest.approx(one.state.log_history[0]["loss"], rel=1e-5)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    teacher = tiny_model("llama", seed=3)
    settings = dict(
        max_steps=6,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        intermediate_layer_pairs=["auto"],
        save_strategy="steps",
        save_steps=3,
    )
    straight = train(tmp_path / "straight", teacher, width_student(teacher), **settings)
    interrupted = DistillationTrainer(
        model=width_student(teacher),
        teacher_model=teacher,
        args=config(tmp_path / "resumed", **settings),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
        callbacks=[StopAt(3)],
    )
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = DistillationTrainer(
        model=width_student(teacher),
        teacher_model=teacher,
        args=config(tmp_path / "resumed", **settings),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "run" / "checkpoint-3"))
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_projection_trains_and_the_export_is_a_plain_model(tmp_path, input_ids):
    teacher = tiny_model("llama", seed=3)
    student = width_student(teacher)
    kept = student.config.minitron_pruning["kept_hidden_channels"]
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path, max_steps=2, intermediate_layer_pairs=["auto"]),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
    )
    projection = getattr(trainer.model, PROJECTION)
    assert projection.weight.shape == (48, 36)
    assert torch.equal(projection.weight[kept, torch.arange(36)], torch.ones(36))  # starts as the channel map
    before = projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(projection.weight, before)  # it is in the optimizer
    # Dynamic α: nothing measured before the first step (logit loss alone), then L_logits / L_is.
    first, second = trainer.state.log_history[:2]
    assert first["alpha"] == 0 and second["alpha"] > 0 and "intermediate" in second
    trainer.export_student(tmp_path / "student")
    assert (tmp_path / "student" / "distillation_projection.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert not hasattr(reloaded, PROJECTION)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, trainer.model.eval()(input_ids).logits)


def test_lora_recovery_exports_merged_weights(tmp_path, input_ids):
    from peft import LoraConfig

    teacher = tiny_model("llama", seed=3)
    trainer = DistillationTrainer(
        model=width_student(teacher),
        teacher_model=teacher,
        args=config(tmp_path, max_steps=2, learning_rate=1e-2, optim="adamw_torch"),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
        peft_config=LoraConfig(r=4, target_modules="all-linear", lora_alpha=8, init_lora_weights=False),
    )
    trainer.train()
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids).logits
    trainer.export_student(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    teacher = tiny_model("llama", seed=3)
    with torch.no_grad():
        teacher.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"not finite.*no checkpoint was saved"):
        train(tmp_path, teacher, width_student(tiny_model("llama", seed=3)))


def test_bad_input_is_refused_before_training(tmp_path):
    teacher = tiny_model("llama", seed=3)
    with pytest.raises(MinitronError, match="No teacher"):
        DistillationTrainer(
            model=width_student(teacher),
            args=config(tmp_path),
            train_dataset=dataset(),
            processing_class=char_tokenizer(),
        )
    with pytest.raises(MinitronError, match=r"vocabulary \(80\) differs from the teacher's \(96\)"):
        DistillationTrainer(
            model=tiny_model("llama", vocab_size=80),
            teacher_model=teacher,
            args=config(tmp_path),
            train_dataset=dataset(),
            processing_class=char_tokenizer(),
        )
    with pytest.raises(MinitronError, match="Layer pairs 9:1 are out of range"):
        DistillationTrainer(
            model=width_student(teacher),
            teacher_model=teacher,
            args=config(tmp_path, intermediate_layer_pairs=["9:1"]),
            train_dataset=dataset(),
            processing_class=char_tokenizer(),
        )
    with pytest.raises(MinitronError, match="not of the form teacher:student"):
        DistillationTrainer(
            model=width_student(teacher),
            teacher_model=teacher,
            args=config(tmp_path, intermediate_layer_pairs=["3-1"]),
            train_dataset=dataset(),
            processing_class=char_tokenizer(),
        )
    with pytest.raises(MinitronError, match="jsd_beta"):
        config(tmp_path, divergence="jsd", jsd_beta=1.0)
    # A student pruned from a model that was frozen (as every teacher is) is frozen too.
    with pytest.raises(MinitronError, match="Every parameter of the student is frozen"):
        DistillationTrainer(
            model=width_student(teacher).requires_grad_(False),
            teacher_model=teacher,
            args=config(tmp_path),
            train_dataset=dataset(),
            processing_class=char_tokenizer(),
        )
    assert not (tmp_path / "run").exists()


def test_padded_vocabulary_is_allowed(tmp_path):
    """Only the padded size differs (e.g. 96 vs 104 rows for a 96-id tokenizer): distil over the shared ids."""
    teacher = tiny_model("llama", seed=3, vocab_size=104)
    trainer = train(tmp_path, teacher, tiny_model("llama", seed=1), max_steps=1)
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))


def test_copies_of_a_patched_model_run_their_own_weights(input_ids):
    from hf_minitron.distillation.forward import TeacherRequest, enable_distillation_forward

    model = tiny_model("llama", seed=3)
    enable_distillation_forward(model)
    copy = __import__("copy").deepcopy(model)
    with torch.no_grad():
        copy.model.norm.weight.mul_(2)
        ours, theirs = (m(input_ids=input_ids, distillation=TeacherRequest()).hidden for m in (model, copy))
    torch.testing.assert_close(theirs, ours * 2)
    assert copy(input_ids=input_ids).logits.shape == (2, 12, 96)  # the plain forward still works


def test_trainer_loss_equals_a_full_logits_reference_on_completion_only_data(tmp_path):
    """prompt/completion rows: only completion tokens count; KL + α·(1 − cos) matches a plain computation."""
    import torch.nn.functional as F

    teacher = tiny_model("llama", seed=3)
    student = width_student(teacher)
    rows = {"prompt": [t[:20] for t in TEXTS], "completion": [t[20:] for t in TEXTS]}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        processing_class=char_tokenizer(),
        args=config(tmp_path, intermediate_layer_pairs=["0:0", "3:2"], intermediate_alpha="0.25"),
        train_dataset=datasets.Dataset.from_dict(rows),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    mask = labels[:, 1:] != -100
    assert mask.sum() < batch["attention_mask"][:, 1:].sum()  # the prompts are not scored
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_out = student(**inputs, output_hidden_states=True)
        t_out = teacher(**inputs, output_hidden_states=True)
        log_q = F.log_softmax(s_out.logits[:, :-1][mask], -1)
        log_p = F.log_softmax(t_out.logits[:, :-1][mask], -1)
        kl = (log_p.exp() * (log_p - log_q)).sum() / mask.sum()
        projection = getattr(student, PROJECTION)
        cos_terms = []

        def post_norm(model, states, layer):  # transformers returns the last layer's output already normed
            return states[-1] if layer + 2 == len(states) else model.model.norm(states[layer + 1])

        for t_layer, s_layer in ((0, 0), (3, 2)):
            s_state = projection(post_norm(student, s_out.hidden_states, s_layer))[:, :-1][mask]
            t_state = post_norm(teacher, t_out.hidden_states, t_layer)[:, :-1][mask]
            cos_terms.append((1 - F.cosine_similarity(s_state, t_state, dim=-1)).sum() / mask.sum())
        expected = kl + 0.25 * sum(cos_terms) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_public_api_names():
    import hf_minitron

    assert hf_minitron.DistillationConfig is DistillationConfig
    assert hf_minitron.DistillationTrainer is DistillationTrainer
    from hf_minitron import evaluate_model, magnitude_importance  # noqa: F401

    with pytest.raises(AttributeError):
        hf_minitron.NotAThing  # noqa: B018
