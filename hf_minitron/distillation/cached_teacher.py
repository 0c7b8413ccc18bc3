"""Training from a teacher-logit cache: the DistillationTrainer's side of it.

With ``teacher_logits_cache`` set, no teacher is loaded. Every prepared (tokenized) row is looked
up in the cache by fingerprint before training starts; its cache row travels through the data
collator as an extra column, and each step reads that row's top-k targets from the shards.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..distillation_data.logit_cache import CACHE_ROW_COLUMN, TeacherLogitCache
from ..errors import MinitronError


def remove_if_empty(folder) -> None:
    path = Path(folder)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


class CachedTeacherMixin:
    """Methods DistillationTrainer gains for cache-based training (``self.logit_cache`` is None otherwise)."""

    logit_cache: TeacherLogitCache | None = None

    @staticmethod
    def _open_cache(teacher_model, args):
        if args.teacher_logits_cache is None:
            return None
        if teacher_model is not None:
            raise MinitronError(
                "Both a teacher model and a teacher-logit cache were given",
                "a cache replaces the teacher: the student trains on the cached targets",
                "pass one of them",
            )
        cache = TeacherLogitCache(args.teacher_logits_cache)
        if abs(cache.temperature - args.temperature) > 1e-9:
            raise MinitronError(
                f"The logit cache was made at temperature {cache.temperature}, training uses {args.temperature}",
                "cached log-probabilities are already tempered",
                f"train with temperature={cache.temperature}, or rebuild the cache at {args.temperature}",
            )
        return cache

    def _attach_cache_rows(self) -> None:
        """Look every prepared row up in the cache (by fingerprint) and carry its cache row through batching."""
        self.logit_cache.check_tokenizer(self.processing_class)
        self.train_dataset = self._with_cache_rows(self.train_dataset, "train")
        if self.eval_dataset is not None:
            evaluation = self.eval_dataset
            if isinstance(evaluation, dict):
                self.eval_dataset = {k: self._with_cache_rows(v, f"eval '{k}'") for k, v in evaluation.items()}
            else:
                self.eval_dataset = self._with_cache_rows(evaluation, "eval")
        inner = self.data_collator

        def collate(examples):
            rows = [example.pop(CACHE_ROW_COLUMN) for example in examples]
            batch = inner(examples)
            batch[CACHE_ROW_COLUMN] = torch.tensor(rows)
            return batch

        self.data_collator = collate

    def _with_cache_rows(self, dataset, name):
        rows = self.logit_cache.rows_for(dataset, name)
        return dataset.add_column(CACHE_ROW_COLUMN, rows)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.logit_cache is not None and CACHE_ROW_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, CACHE_ROW_COLUMN]

    def _attach_cache_rows_or_clean_up(self, output_dir) -> None:
        try:
            self._attach_cache_rows()
        except MinitronError:
            remove_if_empty(output_dir)  # Trainer made it; a refused run leaves nothing behind
            raise

    def _cached_targets(self, cache_rows, labels):
        if cache_rows is None:
            raise MinitronError(
                "A batch reached the trainer without its cache rows",
                "batches must come from the trainer's own data collator when training from a logit cache",
            )
        targets, counts = self.logit_cache.targets(cache_rows.tolist(), device=labels.device)
        scored = (labels[:, 1:] != -100).sum(1).tolist()
        if scored != counts:
            raise MinitronError(
                f"Cached teacher targets do not line up with the batch ({counts} cached vs {scored} scored tokens)",
                fix="rebuild the cache with the same distillation config",
            )
        return targets
