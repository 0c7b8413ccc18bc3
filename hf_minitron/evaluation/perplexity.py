"""Language-modelling loss and perplexity, computed without materialising full logits.

The decoder runs once; the LM head is applied to the scored positions in chunks (``hf_minitron.nll``),
so a 128k-vocabulary model never holds [tokens × vocab] logits at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import iter_texts, row_prefix
from ..errors import MinitronError
from ..families import family_for, final_logit_softcap, get_module
from ..nll import IGNORE_INDEX, chunked_nll


def input_device(model) -> torch.device:
    return get_module(model, family_for(model).embeddings).weight.device


@torch.no_grad()
def row_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    chunk_size: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its scored next tokens, and how many were scored.

    A position t is scored when tokens t and t+1 are both real (mask 1) and, if given,
    ``score_mask[t+1]`` is set (sliding windows score only new tokens; multiple-choice scoring
    only the continuation). The LM head runs on scored positions only, in chunks.
    """
    device = input_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    hidden = get_module(model, family_for(model).decoder)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    return logprobs_from_hidden(model, hidden, input_ids, attention_mask, score_mask, chunk_size)


@torch.no_grad()
def logprobs_from_hidden(
    model, hidden, input_ids, attention_mask, score_mask=None, chunk_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """``row_logprobs`` from the decoder's final (normalised) hidden states."""
    device = hidden.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    valid = (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()
    if score_mask is not None:
        valid &= score_mask.to(device)[:, 1:].bool()
    targets = input_ids[:, 1:].masked_fill(~valid, IGNORE_INDEX)
    lm_head = get_module(model, family_for(model).lm_head)
    nll, counts = chunked_nll(hidden[:, :-1], targets, lm_head, chunk_size, final_logit_softcap(model))
    return -nll.cpu(), counts.cpu()


def token_nll(model, input_ids, attention_mask, score_mask=None, chunk_size: int = 2048) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the scored next tokens of a batch, and how many were scored."""
    sums, counts = row_logprobs(model, input_ids, attention_mask, score_mask, chunk_size)
    return -sums.sum(), int(counts.sum())


def mean_lm_loss(model, calibration_set, batch_size: int = 8, progress: str | None = None) -> float:
    """Mean next-token loss over a CalibrationSet (padding excluded)."""
    total, count = 0.0, 0
    batches = calibration_set.batches(batch_size)
    if progress:
        batches = tqdm(batches, total=math.ceil(len(calibration_set) / batch_size), desc=progress, leave=False)
    for batch in batches:
        nll, n = token_nll(model, batch["input_ids"], batch["attention_mask"])
        total, count = total + float(nll), count + n
    return total / max(count, 1)


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float
    tokens: int

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens}


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    source,
    *,
    seq_len: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    text_column: str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on text from any source ``iter_texts`` accepts.

    The text is joined into one token stream and scored with windows of ``seq_len``
    tokens moved ``stride`` tokens at a time (default: ``seq_len``, i.e. disjoint
    windows). With a smaller stride each token is scored once, with up to
    ``seq_len - stride`` tokens of context before it.
    """
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise MinitronError(f"stride ({stride}) must be between 1 and seq_len ({seq_len})")
    # Each window starts with the tokenizer's BOS when it adds one (row_prefix), scored never; the text
    # itself is one stream of tokens without it.
    prefix = row_prefix(tokenizer)
    if seq_len - len(prefix) < 1:
        raise MinitronError(f"seq_len ({seq_len}) leaves no room after the BOS token")
    seq_len, stride = seq_len - len(prefix), min(stride, seq_len - len(prefix))
    stream: list[int] = []
    for text in iter_texts(source, text_column=text_column, tokenizer=tokenizer):
        if text.strip():
            stream.extend(tokenizer(text, add_special_tokens=not prefix)["input_ids"] + [tokenizer.eos_token_id])
        if max_tokens and len(stream) >= max_tokens + 1:
            break
    stream = stream[: max_tokens + 1] if max_tokens else stream
    if len(stream) < 2:
        raise MinitronError("The evaluation text is empty", fix="point at a non-empty dataset or file")
    windows = []  # (begin, end, first scored position within the window)
    scored_until = 0
    for begin in range(0, len(stream) - 1, stride):
        end = min(begin + seq_len, len(stream))
        windows.append((begin, end, scored_until - begin))
        scored_until = end
        if end == len(stream):
            break
    total, count = 0.0, 0
    steps = range(0, len(windows), batch_size)
    for start in tqdm(steps, desc="perplexity", leave=False, disable=not progress):
        group = windows[start : start + batch_size]
        width = len(prefix) + max(end - begin for begin, end, _ in group)
        ids = torch.full((len(group), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        score = torch.zeros_like(ids)
        for row, (begin, end, first) in enumerate(group):
            length = len(prefix) + end - begin
            ids[row, :length] = torch.tensor(prefix + stream[begin:end])
            mask[row, :length] = 1
            score[row, len(prefix) + first : length] = 1
        nll, n = token_nll(model, ids, mask, score_mask=score)
        total, count = total + float(nll), count + n
    nll = total / count
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=count)
