"""Speed options of the distillation step, checked on CPU: packed documents stay apart in both models,
the logit-loss backend is chosen and named, the teacher follows half precision, compiled layers agree."""

import copy
import importlib.util
import logging

import pytest
import torch
from test_distillation_trainer import config, dataset, train
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_minitron import MinitronError
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation.forward import TeacherRequest, enable_distillation_forward
from hf_minitron.distillation.speed import compile_decoder_layers
from hf_minitron.loading import load_teacher

from helpers import VOCAB, char_tokenizer, tiny_model

DOCUMENTS = [list(range(5, 5 + 11)), list(range(40, 40 + 17)), list(range(70, 70 + 6))]


def packed(documents):
    """What TRL's padding-free collator makes of packed rows: one sequence, position_ids restarting per
    document, the first token of each document unscored, cu_seq_lens for varlen kernels."""
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": d} for d in documents])


def trainer_for(tmp_path, teacher, student, **overrides):
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path, **overrides),
        train_dataset=dataset(),
        processing_class=char_tokenizer(),
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_to_each_other_in_either_model(tmp_path, attention):
    teacher, student = tiny_model("llama", seed=3), tiny_model("llama", seed=5, num_hidden_layers=2)
    for model in (teacher, student):
        model.set_attn_implementation(attention)
    trainer = trainer_for(tmp_path, teacher, student, ce_weight=0.5)
    batch = packed(DOCUMENTS)
    assert {"position_ids", "cu_seq_lens_q"} <= set(batch) and "attention_mask" not in batch
    # The trainer hands both models the same packing inputs: each document's hidden states are its own.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        for model in (trainer.teacher, trainer.model):
            enable_distillation_forward(model)
            together = model(**inputs, distillation=TeacherRequest()).hidden[0]
            start = 0
            for document in DOCUMENTS:
                alone = model(input_ids=torch.tensor([document]), distillation=TeacherRequest()).hidden[0]
                torch.testing.assert_close(together[start : start + len(document)], alone, rtol=1e-4, atol=1e-5)
                start += len(document)
        # So the packed loss is the token-weighted mean of the documents' own losses.
        loss = trainer.compute_loss(trainer.model, batch)
        losses, counts = [], []
        for document in DOCUMENTS:
            alone = packed([document])
            losses.append(trainer.compute_loss(trainer.model, alone))
            counts.append(int((alone["labels"][:, 1:] != -100).sum()))
    expected = sum(n * value for n, value in zip(counts, losses, strict=True)) / sum(counts)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_the_backend_is_chosen_and_named_once(tmp_path, caplog):
    teacher = tiny_model("llama", seed=3)
    with caplog.at_level(logging.WARNING, logger="hf_minitron"):
        trainer = train(tmp_path, teacher, tiny_model("llama", seed=5), logit_loss_backend="liger", max_steps=2)
    expected = "liger" if importlib.util.find_spec("liger_kernel") else "chunked"  # Liger's loss also runs on CPU
    assert trainer.logit_loss_backend == expected
    named = [r.getMessage() for r in caplog.records if f"backend '{expected}'" in r.getMessage()]
    assert len(named) == 1 and "logit_loss_backend=liger" in named[0]
    assert config(tmp_path).logit_chunk_size is None and config(tmp_path).logit_loss_backend == "auto"
    with pytest.raises(MinitronError, match="logit_loss_backend"):
        config(tmp_path, logit_loss_backend="triton")


def test_the_teacher_runs_in_the_training_half_precision(tmp_path):
    args = DistillationConfig(output_dir=str(tmp_path / "o"), bf16=True, use_cpu=True, report_to=[])
    assert DistillationTrainer._load_teacher(tiny_model("llama"), args).dtype == torch.bfloat16
    explicit = DistillationConfig(
        output_dir=str(tmp_path / "o"),
        bf16=True,
        use_cpu=True,
        report_to=[],
        teacher_model_init_kwargs={"dtype": "float32"},
    )
    assert DistillationTrainer._load_teacher(tiny_model("llama"), explicit).dtype == torch.float32
    assert DistillationTrainer._load_teacher(tiny_model("llama"), config(tmp_path)).dtype == torch.float32


def test_bad_teacher_loading_options_are_refused_with_a_fix():
    with pytest.raises(MinitronError, match=r"not valid JSON.*Fix"):
        load_teacher(tiny_model("llama"), init_kwargs="{dtype: bfloat16}")
    with pytest.raises(MinitronError, match="cannot hold a model's weights"):
        load_teacher(tiny_model("llama"), init_kwargs={"dtype": "int8"})
    assert load_teacher(tiny_model("llama"), init_kwargs='{"dtype": "bfloat16"}').dtype == torch.bfloat16


def test_compiled_decoder_layers_compute_the_same_outputs():
    model = tiny_model("llama", num_hidden_layers=2)
    reference = copy.deepcopy(model)
    assert compile_decoder_layers(model) == 2
    input_ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            compiled = model(input_ids=input_ids).logits
    except Exception as error:  # no working compiler here
        pytest.skip(f"torch.compile does not run here: {type(error).__name__}")
    with torch.no_grad():
        torch.testing.assert_close(compiled, reference(input_ids=input_ids).logits, rtol=1e-4, atol=1e-5)
