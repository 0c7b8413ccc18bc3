"""Distil a tiny student through DistillationTrainer; run with 1 process or under torchrun with 2:
``ddp_distill.py OUT_DIR LOSSES`` (comma-separated: logits, intermediate, dynamic).

One trainer per loss setting, one after the other in the same process group (a launch costs more than
the training). The global batch is 4 in both cases (4 × 1 process or 2 × 2 processes); each final
student's weights are written to OUT_DIR/LOSS.safetensors (rank 0) so the test can compare the runs.
"""

import os
import sys
from pathlib import Path

import datasets
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.distillation import DistillationConfig, DistillationTrainer

from helpers import PLAIN_TRAINING, char_tokenizer, tiny_model

TEXTS = [("The quick brown fox jumps over the lazy dog. " * 3)[: 30 + 7 * i] for i in range(8)]


def distil(out: Path, losses: str, world: int) -> None:
    teacher = tiny_model("llama", seed=3)
    student = tiny_model("llama", seed=4, num_hidden_layers=2, hidden_size=36)
    args = DistillationConfig(
        **PLAIN_TRAINING,
        output_dir=str(out.parent / f"run-{losses}-{world}"),
        per_device_train_batch_size=4 // world,
        max_steps=3,
        learning_rate=0.5,
        use_cpu=True,
        intermediate_layer_pairs=["auto"] if losses != "logits" else None,
        intermediate_alpha="dynamic" if losses == "dynamic" else "0.5",
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        processing_class=char_tokenizer(),
        train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if "lm_head" not in k}, out)
        kind = trainer.accelerator.distributed_type
        print(f"world {world}: distributed={kind} {losses} {trainer.state.log_history[0]}")
    sys.stdout.flush()


def main(out_dir: str, losses: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for setting in losses.split(","):
        distil(Path(out_dir) / f"{setting}.safetensors", setting, world)
    if world > 1:
        torch.distributed.barrier()
        # Results are written: leave without interpreter teardown, where gloo's threads can abort the process.
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
