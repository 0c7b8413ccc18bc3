"""Distil a tiny student through DistillationTrainer; run with 1 process or under torchrun with 2.

The global batch is 4 in both cases (4 × 1 process or 2 × 2 processes); the final student weights
are written to OUT (rank 0) so the test can compare the two runs.
"""

import os
import sys
from pathlib import Path

import datasets
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.distillation import DistillationConfig, DistillationTrainer

from helpers import PLAIN_TRAINING, char_tokenizer, tiny_model

TEXTS = [("The quick brown fox jumps over the lazy dog. " * 3)[: 30 + 7 * i] for i in range(8)]


def main(out: str, losses: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    teacher = tiny_model("llama", seed=3)
    student = tiny_model("llama", seed=4, num_hidden_layers=2, hidden_size=36)
    args = DistillationConfig(
        **PLAIN_TRAINING,
        output_dir=str(Path(out).parent / f"run-{world}"),
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
        print(f"world {world}: distributed={trainer.accelerator.distributed_type} loss={trainer.state.log_history[0]}")
    sys.stdout.flush()
    if world > 1:
        trainer.accelerator.wait_for_everyone()
        # Results are written: leave without interpreter teardown, where gloo's threads can abort the process.
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "logits")
