"""The real teacher distils pruned students of itself: eval LM loss and KL to the teacher go down."""

import copy

import datasets
import pytest

from hf_minitron import PruningConfig, prune_model
from hf_minitron.data import iter_texts
from hf_minitron.distillation import DistillationConfig, DistillationTrainer

pytestmark = pytest.mark.slow


def texts(source, n, chars):
    return datasets.Dataset.from_dict({"text": [t[:chars] for t in iter_texts(source)][:n]})


@pytest.mark.parametrize(
    "name, target, extra",
    [
        ("width", PruningConfig(hidden_size=432, intermediate_size=768), {}),
        ("depth", PruningConfig(num_hidden_layers=15), dict(intermediate_layer_pairs=["auto"])),
    ],
)
def test_distillation_lowers_student_loss_and_kl(
    smollm2, teacher_scores, tmp_path, record_measurement, name, target, extra
):
    teacher, tokenizer = smollm2
    # The shared teacher is frozen by any trainer that used it; its copy must train.
    student = prune_model(copy.deepcopy(teacher), target, teacher_scores).requires_grad_(True)
    args = DistillationConfig(
        output_dir=str(tmp_path),
        max_steps=10,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=5e-4,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        max_length=64,
        packing=True,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        **extra,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=tokenizer,
        train_dataset=texts("builtin:python-docs", 300, 2000),
        eval_dataset=texts("builtin:python-docs-heldout", 8, 400),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_student_lm_loss"] < before["eval_student_lm_loss"]
    assert after["eval_kl"] < before["eval_kl"]
    if extra:
        assert after["eval_intermediate"] < before["eval_intermediate"]
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    record_measurement(
        f"SmolLM2 {name} student, 10 distillation steps ({int(tokens)} tokens): held-out LM loss "
        f"{before['eval_student_lm_loss']:.3f} → {after['eval_student_lm_loss']:.3f} (teacher "
        f"{after['eval_teacher_lm_loss']:.3f}), KL {before['eval_kl']:.3f} → {after['eval_kl']:.3f}"
    )
