"""Which llama.cpp pre-tokenizer a Hugging Face BPE tokenizer needs, found the way llama.cpp's converter finds it.

llama.cpp does not run the ``pre_tokenizer`` section of tokenizer.json; it has its own hard-coded splitting
rules, one set per name written as ``tokenizer.ggml.pre``. Its converter picks the name by encoding a fixed
probe text with the Hugging Face tokenizer and looking up the SHA-256 of the printed id list in a table. The
probe exercises whitespace runs, digit groups, emoji, scripts and contractions, so tokenizers whose splits
differ anywhere give different hashes. With the wrong name ("default") llama.cpp splits text differently
from transformers, e.g. " (" and " ->" become two tokens each on SmolLM2.
"""

from __future__ import annotations

import json
from hashlib import sha256

from ..errors import MinitronError

# The converter's probe text, character for character: the hashes below are only valid for this exact string.
# Invisible characters are escaped: a zero-width joiner inside the emoji pair and the variation selector after it.
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 "
    "\U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# Probe hash → llama.cpp pre-tokenizer name, for the BPE tokenizers of the families this library prunes.
# Another tokenizer with the same splitting rules gives the same hash, whatever its vocabulary.
KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama-3.x
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5 / Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding-style variant
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral NeMo (byte-level BPE)
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2 itself
}
# Mistral 7B and Llama-2 use SentencePiece tokenizers: llama.cpp's converter hashes none of those (they are
# read through its SentencePiece vocabulary with no pre-tokenizer), which is how this exporter writes them.


def probe_hash(tokenizer) -> str:
    """SHA-256 of ``str(ids)`` for the probe text, encoded with the tokenizer's defaults (special tokens included)."""
    ids = list(tokenizer.encode(PROBE_TEXT))
    return sha256(str(ids).encode()).hexdigest()


def is_sentencepiece_style(tokenizer_state: dict) -> bool:
    """True for the BPE form of a SentencePiece model (Llama-2, Mistral 7B, Gemma): ▁ spaces and byte fallback.

    llama.cpp reads those through its SentencePiece vocabulary (scores, byte tokens), not as byte-level BPE.
    """
    model = tokenizer_state.get("model", {})
    around = json.dumps([tokenizer_state.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")])
    return bool(model.get("byte_fallback")) or "Metaspace" in around or "\u2581" in around


def pre_tokenizer_name(tokenizer, override: str | None = None) -> str:
    """The ``tokenizer.ggml.pre`` value for this tokenizer; ``override`` wins when given."""
    if override is not None:
        if not isinstance(override, str) or not override.strip():
            raise MinitronError(
                f"pre_tokenizer={override!r} is not a name", fix="pass a llama.cpp name such as 'gpt-2'"
            )
        return override.strip()
    digest = probe_hash(tokenizer)
    name = KNOWN_PRE_TOKENIZERS.get(digest)
    if name is None:
        raise MinitronError(
            f"This BPE tokenizer's splitting rules are not among the ones known here (probe hash {digest})",
            "llama.cpp would tokenize with the wrong rules and the model would see different ids than in "
            f"transformers; known: {', '.join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))}",
            "if you know which llama.cpp pre-tokenizer matches, pass pre_tokenizer='NAME' "
            "(CLI: --pre-tokenizer NAME); otherwise convert with llama.cpp's convert_hf_to_gguf.py",
        )
    return name
