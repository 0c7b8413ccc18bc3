"""Train tiny models with training stages and save each the way its stage does; run with 1 process or
under torchrun with 2 (gloo, CPU): ``stage_export.py STAGES OUT_DIR WRITES_LOG``.

STAGES is a comma-separated list of ``distill`` (DistillationTrainer.export_student, with a width
projection set aside), ``align`` (alignment.align_model) or ``correct``
(teacher_correction.correct_teacher), run one after the other in the same process group (a launch
costs more than the training), each saved to OUT_DIR/STAGE. The global batch is 4 either way (4 × 1
process or 2 × 2), so both runs must end with the same weights. Right after each save returns, every
process checks that the folder is there and holds the weights it trained.
"""

import os
import sys
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoModelForCausalLM
from writes import log_folder_writes

from hf_minitron.alignment import AlignmentConfig, align_model
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation.teacher_correction import TeacherCorrectionConfig, correct_teacher

from helpers import PLAIN_TRAINING, char_tokenizer, tiny_model

TEXTS = [("The quick brown fox jumps over the lazy dog. " * 3)[: 30 + 7 * i] for i in range(8)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def settings(out: Path, world: int) -> dict:
    return dict(
        **PLAIN_TRAINING,
        output_dir=str(out.parent / f"run-{out.name}-{world}"),
        per_device_train_batch_size=4 // world,
        max_steps=2,
        learning_rate=0.1,
        use_cpu=True,
    )


def distill(out: Path, world: int):
    student = tiny_model("llama", seed=4, num_hidden_layers=2, hidden_size=36)
    args = DistillationConfig(**settings(out, world), intermediate_layer_pairs=["auto"], intermediate_alpha="0.5")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_model("llama", seed=3),
        args=args,
        processing_class=char_tokenizer(),
        train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
    )
    trainer.train()
    trainer.export_student(out)
    return student


def align(out: Path, world: int):
    model = tiny_model("llama", seed=4).requires_grad_(True)
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = {"prompt": [text[:20] for text in TEXTS], "completion": [text[20:] for text in TEXTS]}
    args = AlignmentConfig(**settings(out, world))
    align_model(model, tokenizer, datasets.Dataset.from_dict(rows), args, out)
    return model


def correct(out: Path, world: int):
    teacher = tiny_model("llama", seed=3).requires_grad_(True)
    args = TeacherCorrectionConfig(**settings(out, world), warmup_steps=0)
    correct_teacher(
        teacher,
        datasets.Dataset.from_dict({"text": TEXTS}),
        args,
        processing_class=char_tokenizer(),
        export_dir=out,
    )
    return teacher


STAGES = {"distill": distill, "align": align, "correct": correct}


def main(stages: str, out_dir: str, writes: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    log_folder_writes(Path(writes))
    for stage in stages.split(","):
        out = Path(out_dir) / stage
        trained = STAGES[stage](out, world)
        # No waiting here: the save itself must return only once the folder is in place on every process.
        assert (out / "model.safetensors").is_file(), f"rank {rank}: the save returned before the folder existed"
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        mine = {name: tensor.detach() for name, tensor in trained.state_dict().items() if "projection" not in name}
        for name, tensor in reloaded.state_dict().items():
            torch.testing.assert_close(tensor, mine[name], rtol=0, atol=0, msg=f"{stage}: {name}")
        print(f"rank {rank}: the saved {stage} folder holds this process's trained weights", flush=True)
    if world > 1:
        torch.distributed.barrier()
        # Every check is done: leave without interpreter teardown, where gloo's threads can abort the process.
        os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
