"""How the teacher writes: batched transformers generation (KV cache on), or vLLM on a GPU.

Each backend's ``generate(texts, settings)`` returns, for every prompt text, ``num_per_prompt``
tuples of (completion text, new tokens, finish reason "stop" or "length").
"""

from __future__ import annotations

import torch

from ..data import prompt_ids
from ..errors import MinitronError

# ``settings`` below is a generate.GenerationSettings (max_new_tokens, temperature, top_p, num_per_prompt,
# seed); it is not imported here, since generate.py imports this module.


class TransformersBackend:
    """Batched sampling with model.generate (KV cache on), left-padded prompts."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def generate(self, texts: list[str], settings) -> list[list[tuple[str, int, str]]]:
        """For each prompt text, num_per_prompt (completion, new tokens, finish reason)."""
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            encoded = [{"input_ids": prompt_ids(self.tokenizer, text)} for text in texts]
            batch = self.tokenizer.pad(encoded, return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        sampling = settings.temperature > 0
        output = self.model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            top_k=None,
            num_return_sequences=settings.num_per_prompt,
            pad_token_id=self.pad,
            use_cache=True,
        )
        new = output[:, batch["input_ids"].shape[1] :].cpu()
        eos = self.tokenizer.eos_token_id
        results = []
        for sequence in new:
            ends = (sequence == eos).nonzero()
            length = int(ends[0]) + 1 if len(ends) else int((sequence != self.pad).sum())
            finish = "stop" if len(ends) else "length"
            text = self.tokenizer.decode(sequence[:length], skip_special_tokens=True).strip()
            results.append((text, length, finish))
        n = settings.num_per_prompt
        return [results[i * n : (i + 1) * n] for i in range(len(texts))]


class VllmBackend:
    """vLLM on a GPU: continuous batching and paged attention for large generation runs."""

    def __init__(self, source: str, tokenizer, dtype: str = "float32"):
        try:
            import vllm
        except ImportError as error:
            raise MinitronError(
                "The vllm backend needs the vllm package", fix="pip install vllm, or use backend 'transformers'"
            ) from error
        if not torch.cuda.is_available():
            raise MinitronError("The vllm backend needs a GPU", fix="use backend 'transformers' on this machine")
        self.vllm, self.tokenizer = vllm, tokenizer
        self.engine = vllm.LLM(model=source, tokenizer=source, dtype=dtype)  # the teacher's precision rule

    def generate(self, texts, settings, seed: int = 0):
        params = self.vllm.SamplingParams(
            n=settings.num_per_prompt,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=seed,
        )
        # Token prompts, as the transformers backend sees them: vLLM would add a BOS to chat-templated text
        # that already starts with one, and none is missing from plain text (prompt_ids adds it).
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, text)} for text in texts]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        return [
            [(o.text.strip(), len(o.token_ids), "stop" if o.finish_reason == "stop" else "length") for o in out.outputs]
            for out in outputs
        ]
