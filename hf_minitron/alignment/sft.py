"""SFT alignment with TRL's SFTTrainer: chat template applied, loss on the assistant's answer only.

Instruction data comes in several shapes; all are turned into conversational prompt/completion
rows (the prompt is every turn before the last assistant message, the completion is that
message), which SFTTrainer trains with completion-only loss for any chat template — no
``{% generation %}`` markers needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trl import SFTConfig

from ..checkpoints import train_from
from ..distillation.config import apply_device_defaults
from ..errors import MinitronError
from ..exporting import export_trained_model
from ..redaction import SecretsNotPickled


@dataclass
class AlignmentConfig(SecretsNotPickled, SFTConfig):
    """TRL's SFTConfig, with bf16 switched on only where a GPU can run it (and no token in saved copies)."""

    def __post_init__(self):
        apply_device_defaults(self)
        super().__post_init__()


def _conversation(row: dict) -> tuple[list[dict], list[dict]]:
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise MinitronError("A chat row has no assistant message", fix="each conversation needs an answer")
        return messages[:last], [messages[last]]
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
    elif "prompt" in row and "response" in row:
        prompt, completion = row["prompt"], row["response"]
    elif "instruction" in row and ("output" in row or "response" in row):
        context = row.get("input") or row.get("context") or ""
        prompt = row["instruction"] + (f"\n\n{context}" if context else "")
        completion = row.get("output", row.get("response"))
    else:
        raise MinitronError(
            f"Cannot read instruction data with columns {sorted(row)}",
            fix="give 'messages', 'prompt'/'completion', 'prompt'/'response' or 'instruction'/'output' columns",
        )
    prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    completion = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return prompt, completion


def to_prompt_completion(dataset):
    """Any supported instruction dataset as conversational prompt/completion rows."""
    first = dataset[0]
    _conversation(first)  # a clear error for an unsupported shape, before mapping everything

    def convert(row):
        prompt, completion = _conversation(row)
        return {"prompt": prompt, "completion": completion}

    return dataset.map(convert, remove_columns=dataset.column_names)


def align_model(
    model,
    tokenizer,
    dataset,
    args,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    resume_from_checkpoint: str | None = None,
) -> Path:
    """Fine-tune ``model`` on ``dataset`` with an SFTConfig ``args`` and save it (with tokenizer) atomically;
    ``resume_from_checkpoint`` continues an interrupted run from one of its checkpoints.

    Under ``accelerate launch`` call it on every process: the weights are gathered from all of them and
    the main process writes the folder (``hf_minitron.exporting``)."""
    from trl import SFTTrainer

    if getattr(tokenizer, "chat_template", None) is None and not getattr(args, "chat_template_path", None):
        raise MinitronError(
            "The tokenizer has no chat template",
            "an Instruct variant answers in a chat format, which alignment must teach",
            "set chat_template_path in the alignment settings (a template file or a tokenizer that has one)",
        )
    data = to_prompt_completion(dataset)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    train_from(trainer, resume_from_checkpoint)
    return export_trained_model(trainer, output_dir, overwrite=overwrite, kind="aligned model")
