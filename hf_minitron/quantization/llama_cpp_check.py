"""Compare a GGUF file run by llama.cpp (through llama-cpp-python) with the transformers model it came from.

Three checks: the token ids of many awkward strings (the pre-tokenizer and special-token metadata are
right only if every one matches), per-position next-token agreement and KL divergence on real prompts
(the weights, layout and architecture are right), and greedy generations (the two agree end to end).
llama-cpp-python is optional and builds llama.cpp from source; it is imported only here.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MinitronError

_WORDS = ["hello", "world", "def", "return", "naïve", "café", "Äpfel", "the", "I've", "'RE", "don't"]
_DIGITS = ["3", "33", "333", "3333", "33333", "123456789", "3.14159", "1,234,567", "2024-01-31", "0x1F", "1e-5"]
_WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", " \n", "\t\n ", "\r\n", "    \n    "]
_UNICODE = [
    "нещо на Български",
    "我想在apple工作1314151天～",
    "កាន់តែពិសេសអាច",
    "مرحبا بالعالم",
    "e\u0301 vs \u00e9",
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f \u2705 \U0001f999\U0001f999",
    "Cửa Việt",
    "ied 4 ½ months",
]
_CODE = [
    "def f(x) -> int:\n    return x + 1\n",
    "if (a && b) { return -1; }",
    "x = [1, 2, 3]  # a list",
    "for i in range(10):\n\tprint(i)",
    '{"key": "value", "n": 42}',
    '<div class="x">text</div>',
    "a -> b => c != d",
    "SELECT * FROM t WHERE id = 7;",
    "```python\nimport os\n```",
    "...!!!??? ------=======",
]

# Real prompts for the logit and generation comparison: prose, code, arithmetic, whitespace runs.
SAMPLE_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Compute (3 + 4) * 12 -> the answer is",
    "Once upon a time, in a small village,",
    "import numpy as np\nx = np.arange(10)",
    "  Indented text\twith tabs and  double  spaces (like this).",
]


def probe_texts(chat_template_text: str = "") -> list[str]:
    """Several hundred strings made to trip a tokenizer: digits, whitespace runs, scripts, code, markup."""
    bases = _WORDS + _DIGITS + _UNICODE + _CODE
    texts = list(bases)
    texts += [space + base for space, base in itertools.product([" ", "  ", "\n"], bases)]
    texts += [f"a{space}b" for space in _WHITESPACE] + [f"{space}x{space}" for space in _WHITESPACE]
    texts += [" (" * n for n in range(1, 4)] + [" ->" * n for n in range(1, 4)]
    texts += ["3" * n for n in range(1, 13)] + [f"{n} {n * 7}" for n in (1, 12, 123, 1234)]
    texts += [f"{word} {number}" for word, number in zip(_WORDS, _DIGITS, strict=True)]
    if chat_template_text:
        texts.append(chat_template_text)
    return list(dict.fromkeys(texts))  # unique, in order


def with_smollm2_pre_tokenizer(tokenizer):
    """A copy of a SmolLM2 tokenizer rebuilt from a GGUF file, with SmolLM2's own splitting rules restored.

    transformers rebuilds a GGUF tokenizer with the plain GPT-2 byte-level split and drops SmolLM2's first
    step, which cuts every digit (and numeric character such as ½) into its own piece. The two agree on
    most text (the probe hash is the same) but not on "  3" or " ½"; llama.cpp's "smollm" rules, like
    SmolLM2's original tokenizer.json, do the digit split, so that is the reference to compare against.
    """
    from tokenizers import pre_tokenizers

    restored = copy.deepcopy(tokenizer)
    restored.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return restored


def _load(path, **options):
    try:
        from llama_cpp import Llama
    except ImportError as error:
        raise MinitronError(
            "llama-cpp-python is not installed",
            fix="pip install llama-cpp-python (it builds llama.cpp from source, which takes a while)",
        ) from error
    return Llama(model_path=str(path), verbose=False, n_threads=1, **options)


def llama_cpp_token_ids(path, texts: list[str]) -> list[list[int]]:
    """Token ids llama.cpp gives each text, adding BOS/EOS as the file says and parsing special tokens."""
    vocab = _load(path, vocab_only=True)
    return [vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True) for text in texts]


def tokenization_mismatches(tokenizer, path, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """(text, transformers ids, llama.cpp ids) for every text on which the two disagree."""
    theirs = llama_cpp_token_ids(path, texts)
    ours = [list(tokenizer(text).input_ids) for text in texts]
    return [(text, a, b) for text, a, b in zip(texts, ours, theirs, strict=True) if a != b]


@dataclass
class LogitAgreement:
    positions: int
    top1_agreement: float  # share of positions where both pick the same next token
    mean_kl: float  # KL(transformers || llama.cpp) per position, in nats
    identical_generations: int
    generations: int


def logit_agreement(
    model,
    tokenizer,
    path,
    prompts: list[str],
    generate: int = 24,
    f32_cache: bool = False,
    passages: list[list[int]] = (),
) -> LogitAgreement:
    """Compare next-token distributions position by position, then greedy continuations of each prompt.

    ``passages`` (token ids) are scored position by position too, but not continued: longer real text
    gives the top-1 agreement many more positions than a few short prompts (one position of 100 is 1%).
    llama.cpp keeps its KV cache in F16 by default, which moves logits by ~1e-3; ``f32_cache`` keeps it in
    F32, for tiny random models whose near-flat logits have top-1 margins smaller than that.
    """
    encoded = [list(tokenizer(p).input_ids) for p in prompts]
    scored = encoded + [list(ids) for ids in passages if len(ids)]
    context = max(max(len(ids) for ids in scored), max(len(ids) for ids in encoded) + generate) + 8
    cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # 0: GGML_TYPE_F32
    runner = _load(path, n_ctx=context, n_batch=context, logits_all=True, **cache)

    def llama_cpp_logits(ids: list[int]) -> np.ndarray:
        runner.reset()
        runner.eval(ids)
        return np.array(runner.scores[: len(ids)], dtype=np.float64)

    def transformers_logits(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double().numpy()

    def llama_cpp_greedy(ids: list[int]) -> list[int]:
        llama_cpp_logits(ids)  # fills the cache with the prompt; then one token at a time
        generated = []
        for _ in range(generate):
            generated.append(int(np.argmax(runner.scores[runner.n_tokens - 1])))
            runner.eval(generated[-1:])
        return generated

    def transformers_greedy(ids: list[int]) -> list[int]:
        # A plain argmax loop over the KV cache: generate() would apply the model's generation config.
        generated, inputs, past = [], torch.tensor([ids]), None
        with torch.no_grad():
            for _ in range(generate):
                out = model(inputs, cache=past, use_cache=True)
                generated.append(int(out.logits[0, -1].argmax()))
                inputs, past = torch.tensor([generated[-1:]]), out.cache
        return generated

    agree = total = identical = 0
    kl_sum = 0.0
    for ids in scored:
        reference, theirs = transformers_logits(ids), llama_cpp_logits(ids)
        vocab = min(reference.shape[-1], theirs.shape[-1])
        log_p = torch.log_softmax(torch.from_numpy(reference[:, :vocab]), -1)
        log_q = torch.log_softmax(torch.from_numpy(theirs[:, :vocab]), -1)
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum())
        agree += int((reference.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
    for ids in encoded:
        identical += transformers_greedy(ids) == llama_cpp_greedy(ids)
    return LogitAgreement(total, agree / total, kl_sum / total, identical, len(encoded))
