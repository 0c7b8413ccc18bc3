"""The one chunked next-token loss, against full-logit cross-entropy, and each of its callers."""

import pytest
import torch
import torch.nn.functional as F

from hf_minitron.distillation.callbacks import labelled_lm_loss
from hf_minitron.evaluation.perplexity import mean_lm_loss, token_nll
from hf_minitron.nll import IGNORE_INDEX, chunked_nll

from helpers import VOCAB, tiny_calibration, tiny_model


def _targets_with_gaps(rows: int, positions: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, VOCAB, (rows, positions), generator=generator)
    targets[0, :3] = IGNORE_INDEX  # a prompt that is not scored
    targets[1, -5:] = IGNORE_INDEX  # right padding
    targets[2] = IGNORE_INDEX  # a row with nothing to score
    return targets


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_nll_equals_cross_entropy_on_full_logits(chunk_size):
    torch.manual_seed(0)
    hidden, head = torch.randn(4, 9, 16), torch.nn.Linear(16, VOCAB, bias=False)
    targets = _targets_with_gaps(4, 9)
    full = F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    expected = full.view(4, 9).sum(1).double()
    rows_per_call = []
    head.register_forward_hook(lambda module, inputs, output: rows_per_call.append(inputs[0].shape[0]))

    with_module = chunked_nll(hidden, targets, head, chunk_size)
    with_weight = chunked_nll(hidden, targets, head.weight, chunk_size)

    for sums, counts in (with_module, with_weight):
        torch.testing.assert_close(sums, expected, rtol=1e-6, atol=1e-6)
        assert counts.tolist() == [6, 4, 0, 9]
    # Memory stays at one chunk's logits: the head never sees more than chunk_size positions at once.
    assert max(rows_per_call) <= chunk_size and sum(rows_per_call) == 19


def test_perplexity_nll_equals_the_models_own_loss_on_padded_rows():
    model, calibration = tiny_model(), tiny_calibration(num_samples=5, padded=True)
    batch = next(iter(calibration.batches(5)))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
    nll, count = token_nll(model, batch["input_ids"], batch["attention_mask"], chunk_size=7)
    assert float(nll) == pytest.approx(float(expected), rel=1e-5)
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert mean_lm_loss(model, calibration, batch_size=2) == pytest.approx(float(expected) / count, rel=1e-5)


def test_teacher_gap_loss_equals_the_models_own_loss_over_batches():
    model, calibration = tiny_model(seed=2), tiny_calibration(num_samples=6, padded=True)
    batches = []
    for batch in calibration.batches(3):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        labels[:, :4] = IGNORE_INDEX  # prompt tokens, as completion-only training masks them
        batches.append({**batch, "labels": labels})
    total = count = 0.0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), shifted.flatten(), reduction="sum"))
            count += int((shifted != IGNORE_INDEX).sum())
    assert labelled_lm_loss(model, batches) == pytest.approx(total / count, rel=1e-5)
