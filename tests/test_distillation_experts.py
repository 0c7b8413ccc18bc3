"""Distilling a pruned mixture-of-experts student, with and without the router balance loss."""

import copy

import datasets
import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from hf_minitron import PruningConfig, estimate_importance, prune_model
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation.router import load_balancing_loss

from helpers import PLAIN_TRAINING, char_tokenizer, tiny_calibration, tiny_moe_model

TEXTS = [("Pack my box with five dozen liquor jugs. " * 3)[: 30 + 9 * i] for i in range(8)]


def moe_student(teacher):
    scores = estimate_importance(teacher, calibration_data=tiny_calibration(), batch_size=3, progress=False)
    student = copy.deepcopy(teacher).requires_grad_(True)  # a trainer freezes its teacher, copies included
    return prune_model(student, PruningConfig(num_experts=4, moe_intermediate_size=16), scores)


def distil(tmp_path, teacher, student, router_aux_loss_coef, steps=2):
    args = DistillationConfig(
        **PLAIN_TRAINING,
        router_aux_loss_coef=router_aux_loss_coef,
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=steps,
        learning_rate=0.5,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": TEXTS * 2}),
        processing_class=char_tokenizer(),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("masked", [False, True])
def test_balance_loss_matches_transformers(masked):
    generator = torch.Generator().manual_seed(0)
    layers = tuple(torch.randn(2 * 5, 6, generator=generator) for _ in range(3))  # 3 layers, batch 2 × 5 tokens
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]) if masked else None
    ours = load_balancing_loss(layers, 6, 2, mask)
    theirs = load_balancing_loss_func(layers, 6, 2, mask)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_moe_student_distils_and_the_balance_loss_follows_the_config(family, tmp_path):
    teacher = tiny_moe_model(family)
    trained = {}
    # 0.0 turns the balance loss off; 0.5 is large, so its effect on the weights is plain to see.
    for balance, coef in ((False, 0.0), (True, 0.5)):
        student = moe_student(teacher)
        before = {name: p.detach().clone() for name, p in student.named_parameters()}
        trainer = distil(tmp_path / str(balance), teacher, student, coef)
        assert student.config.output_router_logits == balance
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert logged and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
        assert ("router" in logged[-1]) == balance
        routers = [name for name in before if name.endswith("mlp.gate.weight")]
        assert routers and all(not torch.equal(before[n], student.get_parameter(n)) for n in routers)
        trained[balance] = {n: student.get_parameter(n).detach().clone() for n in routers}
    # Same data, same seed: only the balance loss can make the routers end up elsewhere.
    assert any(not torch.equal(trained[False][n], trained[True][n]) for n in trained[False])


def test_the_balance_loss_is_on_by_default_with_the_architectures_coefficient(tmp_path):
    teacher = tiny_moe_model("mixtral", router_aux_loss_coef=0.02)
    student = moe_student(teacher)
    trainer = distil(tmp_path, teacher, student, None, steps=1)
    assert student.config.output_router_logits and student.config.router_aux_loss_coef == 0.02
    assert "router" in trainer.state.log_history[0]
