"""Tiny random models of every supported family, built in code, and small helpers."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from hf_minitron import CalibrationSet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAMILY_CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma3": Gemma3TextConfig,
}
MOE_FAMILY_CONFIGS = {"qwen3_moe": Qwen3MoeConfig, "mixtral": MixtralConfig, "qwen2_moe": Qwen2MoeConfig}
VOCAB = 96
# Deterministic training for tiny tests: plain SGD at a constant rate, no clipping or decay, every step
# logged, nothing saved or reported.
PLAIN_TRAINING = dict(
    optim="sgd",
    lr_scheduler_type="constant",
    weight_decay=0.0,
    max_grad_norm=0.0,
    report_to=[],
    logging_steps=1,
    save_strategy="no",
    max_length=48,
    gradient_checkpointing=False,
    seed=0,
)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A 4-layer model: hidden 48, 6 query heads over 2 KV heads of head_dim 16, MLP 80."""
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=80,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    if family == "gemma3":
        settings.update(_gemma3_settings(overrides.get("num_hidden_layers", settings["num_hidden_layers"])))
    settings.update(overrides)
    torch.manual_seed(seed)
    config_class = {**FAMILY_CONFIGS, **MOE_FAMILY_CONFIGS}[family]
    model = AutoModelForCausalLM.from_config(config_class(**settings), dtype=torch.float32)
    # Random init gives near-identical weights everywhere; widen the spread so rankings mean something.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif param.dim() in (2, 3):  # 3-D: the fused expert weights of mixture-of-experts layers
                param.normal_(0, 0.2)
            else:
                param.normal_(0, 0.05)
    return model.eval()


def tiny_moe_model(family: str = "qwen3_moe", seed: int = 0, **overrides):
    """A 4-layer mixture-of-experts model: 6 experts of width 32 per sparse layer, 2 routed per token
    (Qwen2-MoE adds a shared expert of width 40)."""
    width_key = "intermediate_size" if family == "mixtral" else "moe_intermediate_size"
    settings = {"num_local_experts" if family != "qwen2_moe" else "num_experts": 6, "num_experts_per_tok": 2}
    settings[width_key] = 32
    if family != "mixtral":  # Mixtral always renormalises its top-k weights; the Qwen models only when asked
        settings["norm_topk_prob"] = True
    if family == "qwen2_moe":
        settings["shared_expert_intermediate_size"] = 40
    settings.update(overrides)
    return tiny_model(family, seed=seed, **settings)


def _gemma3_settings(num_layers: int) -> dict:
    """Gemma 3 specifics at tiny scale: a window shorter than the test sequences, so sliding and full
    layers really differ, every third layer full (the real models use every sixth), and the attention
    scale tied to head_dim as in the released models."""
    layer_types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(num_layers)]
    return dict(layer_types=layer_types, sliding_window=6, query_pre_attn_scalar=16)


def tiny_calibration(num_samples: int = 6, length: int = 24, padded: bool = False, seed: int = 1) -> CalibrationSet:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        n = length - (i * 3) % (length // 2) if padded else length
        samples.append(torch.randint(3, VOCAB, (n,), generator=generator))
    return CalibrationSet(samples=samples, pad_token_id=0, description="random tokens")


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def char_tokenizer():
    """A real fast tokenizer built offline: one token per printable ASCII character."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for code in range(32, 32 + VOCAB - 3):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def save_tiny(path, family: str = "llama", **overrides):
    """A tiny model and its tokenizer in a folder, as a user's checkpoint would be."""
    model = tiny_model(family, **overrides)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
