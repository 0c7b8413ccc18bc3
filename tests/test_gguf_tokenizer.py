"""GGUF tokenizer metadata and architecture choice: what llama.cpp needs to tokenize and run exactly."""

import json

import gguf
import numpy as np
import pytest
import torch

from hf_minitron import MinitronError, load_tokenizer
from hf_minitron.cli import main
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.gguf_tokenizer import BYTE, CONTROL, USER_DEFINED
from hf_minitron.quantization.pretokenizers import KNOWN_PRE_TOKENIZERS, PROBE_TEXT, probe_hash

from helpers import tiny_model, tiny_moe_model

TRAINING_TEXT = ["hello world", "def f(x): return x + 1", "3 33 333", "naïve café", "the cat sat on the mat"] * 4


def tiny_bpe_tokenizer(adds_bos=False, sentencepiece_style=False, added=()):
    """A small BPE tokenizer trained offline: byte-level (GPT-2 style) or the ▁/byte-fallback form of SentencePiece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=sentencepiece_style, unk_token="<unk>"))
    if sentencepiece_style:
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        alphabet = []
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(list(added))
    return tokenizer


def tiny_sentencepiece_tokenizer():
    """The SentencePiece BPE form as Gemma has it: ▁ for spaces, no prefix, all 256 byte tokens, BOS added."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tiny_bpe_tokenizer(adds_bos=True, sentencepiece_style=True).backend_tokenizer.to_str())
    trained = state["model"]["vocab"]
    vocab = {token: index for token, index in trained.items() if index < 3}  # <unk> <s> </s>
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for token in sorted(set(trained) - set(vocab), key=trained.get):
        vocab[token] = len(vocab)
    state["model"]["vocab"] = vocab
    state["added_tokens"] = [{**added, "id": vocab[added["content"]]} for added in state["added_tokens"]]
    state["post_processor"]["special_tokens"]["<s>"]["ids"] = [vocab["<s>"]]
    state["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    state["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"String": " "},
        "behavior": "MergedWithPrevious",
        "invert": False,
    }
    state["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }
    backend = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def fields(path):
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}, reader


def test_probe_hash_of_the_real_smollm2_tokenizer_is_the_smollm_entry(tmp_path):
    tokenizer = load_tokenizer("builtin:smollm2-135m")
    assert "\u200d" in PROBE_TEXT and len(tokenizer.encode(PROBE_TEXT)) > 100
    assert KNOWN_PRE_TOKENIZERS[probe_hash(tokenizer)] == "smollm"
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", "F32", tokenizer=tokenizer)
    meta, _ = fields(path)
    assert meta["tokenizer.ggml.pre"] == "smollm"  # was "default", which splits " (" and " ->" in two
    # SmolLM2 adds neither BOS nor EOS when encoding; llama.cpp must not either.
    assert tokenizer("Hello").input_ids[0] != tokenizer.bos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    for name in ("bos", "eos", "unknown", "padding"):
        attribute = {"unknown": "unk", "padding": "pad"}.get(name, name)
        assert meta[f"tokenizer.ggml.{name}_token_id"] == getattr(tokenizer, f"{attribute}_token_id")
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    types = meta["tokenizer.ggml.token_type"]
    assert all(types[i] == CONTROL for i in tokenizer.all_special_ids)


def test_unknown_bpe_tokenizer_is_refused_unless_named(tmp_path):
    tokenizer = tiny_bpe_tokenizer()
    with pytest.raises(MinitronError, match=r"probe hash [0-9a-f]{64}.*pre_tokenizer='NAME'"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "m.gguf").exists()
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer, pre_tokenizer="gpt-2")
    assert fields(path)[0]["tokenizer.ggml.pre"] == "gpt-2"


def test_cli_pre_tokenizer_option(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "model")
    tiny_bpe_tokenizer().save_pretrained(tmp_path / "model")
    assert main(["export-gguf", str(tmp_path / "model"), "-o", str(tmp_path / "a.gguf")]) == 2
    assert "--pre-tokenizer NAME" in capsys.readouterr().err
    command = ["export-gguf", str(tmp_path / "model"), "-o", str(tmp_path / "b.gguf"), "--pre-tokenizer", "gpt-2"]
    assert main(command) == 0
    assert fields(tmp_path / "b.gguf")[0]["tokenizer.ggml.pre"] == "gpt-2"


def test_bos_behaviour_and_added_tokens_are_written_as_the_tokenizer_behaves(tmp_path):
    tokenizer = tiny_bpe_tokenizer(adds_bos=True, added=["<tool>"])
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tokenizer, pre_tokenizer="gpt-2")
    meta, _ = fields(path)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    types = meta["tokenizer.ggml.token_type"]
    # A non-special added token is matched in plain text by transformers, so llama.cpp must match it too.
    assert types[tokenizer.convert_tokens_to_ids("<tool>")] == USER_DEFINED
    assert types[tokenizer.bos_token_id] == CONTROL


def test_sentencepiece_style_tokenizer_is_written_as_llama_cpp_sentencepiece(tmp_path):
    tokenizer = tiny_sentencepiece_tokenizer()
    path = export_gguf(tiny_model(), tmp_path / "m.gguf", "F32", tokenizer=tokenizer)
    meta, _ = fields(path)
    assert meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in meta
    assert meta["tokenizer.ggml.add_space_prefix"] is False  # Gemma's form: no ▁ before the first word
    assert meta["tokenizer.ggml.add_bos_token"] is True
    types, scores = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.scores"]
    assert types[tokenizer.convert_tokens_to_ids("<0x0A>")] == BYTE and types[tokenizer.bos_token_id] == CONTROL
    # The first merge's piece scores highest: llama.cpp merges the best-scored pair first.
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    first, last = ("".join(m if isinstance(m, list) else m.split(" ")) for m in (merges[0], merges[-1]))
    assert scores[tokenizer.convert_tokens_to_ids(first)] > scores[tokenizer.convert_tokens_to_ids(last)]


def test_byte_fallback_without_byte_tokens_is_refused(tmp_path):
    # llama.cpp aborts the whole process when it falls back to a byte token that does not exist.
    with pytest.raises(MinitronError, match=r"0 of the 256 byte tokens.*--no-tokenizer"):
        export_gguf(tiny_model(), tmp_path / "m.gguf", tokenizer=tiny_bpe_tokenizer(sentencepiece_style=True))
    assert not list(tmp_path.iterdir())


def unpermute(weight, heads):
    """Undo llama.cpp's rotary row order (interleaved pairs back to HF's two halves)."""
    return (
        weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def test_qwen2_whose_heads_do_not_tile_hidden_is_written_as_llama(tmp_path):
    model = tiny_model("qwen2")  # 6 heads × 16 = 96 query rows over hidden 48
    assert model.config.num_attention_heads * model.config.head_dim != model.config.hidden_size
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == "llama"  # llama.cpp's qwen2 assumes q is hidden × hidden
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    attention = model.model.layers[1].self_attn
    for role, heads in (("q", 6), ("k", 2)):
        for kind in ("weight", "bias"):
            original = getattr(getattr(attention, f"{role}_proj"), kind).detach().numpy()
            np.testing.assert_array_equal(unpermute(tensors[f"blk.1.attn_{role}.{kind}"], heads), original)
    np.testing.assert_array_equal(tensors["blk.1.attn_v.bias"], attention.v_proj.bias.detach().numpy())
    # An unpruned Qwen2 keeps llama.cpp's own qwen2 architecture, unpermuted.
    plain = export_gguf(tiny_model("qwen2", head_dim=8), tmp_path / "q.gguf", "F32", include_tokenizer=False)
    assert fields(plain)[0]["general.architecture"] == "qwen2"


def test_qwen3_round_trips_with_its_qk_norms(tmp_path):
    from transformers import AutoModelForCausalLM

    # transformers' GGUF reader ignores the key length for qwen3 and assumes head_dim 128, so the
    # round trip uses that; llama.cpp itself reads the key length (written for any head_dim).
    model = tiny_model("qwen3", head_dim=128, num_attention_heads=2, num_key_value_heads=1)
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == "qwen3" and meta["qwen3.attention.key_length"] == 128
    assert "blk.0.attn_q_norm.weight" in {t.name for t in reader.tensors}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def tensors_of(reader):
    return {t.name: np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}


def test_gemma3_metadata_and_norm_gains(tmp_path):
    model = tiny_model("gemma3", num_hidden_layers=6, final_logit_softcapping=30.0, query_pre_attn_scalar=64)
    model.config.layer_types = [model.config.layer_types[i] for i in (0, 2, 3, 4, 5, 1)]  # as after depth pruning
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == "gemma3"
    assert meta["gemma3.attention.key_length"] == 16 and meta["gemma3.attention.sliding_window"] == 6
    # One flag per layer: the pattern of a depth-pruned model is no longer "every n-th layer is full".
    assert meta["gemma3.attention.sliding_window_pattern"] == [
        t == "sliding_attention" for t in model.config.layer_types
    ]
    assert meta["gemma3.rope.freq_base"] == 1e6 and meta["gemma3.rope.freq_base_swa"] == 1e4
    assert meta["gemma3.final_logit_softcapping"] == 30.0
    tensors, layer = tensors_of(reader), model.model.layers[2]
    # llama.cpp multiplies by the stored gain: Gemma's (1 + w) is written out.
    for ours, theirs in (
        ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"),
    ):
        np.testing.assert_allclose(tensors[f"blk.2.{ours}.weight"], getattr(layer, theirs).weight.detach().numpy() + 1)
    # llama.cpp scales queries by 1/sqrt(head_dim 16); query_pre_attn_scalar 64 asks for 1/8: the query norm halves.
    q_norm = layer.self_attn.q_norm.weight.detach().numpy() + 1
    np.testing.assert_allclose(tensors["blk.2.attn_q_norm.weight"], q_norm * 0.5, rtol=1e-6)
    assert "output.weight" not in tensors  # tied, and llama.cpp applies the same sqrt(hidden) multiplier


def test_gemma3_that_llama_cpp_would_compute_differently_is_refused(tmp_path):
    model = tiny_model("gemma3")
    model.config.rope_parameters["full_attention"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    with pytest.raises(MinitronError, match="'linear' RoPE scaling on its full_attention layers"):
        export_gguf(model, tmp_path / "m.gguf", include_tokenizer=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "family, architecture", [("qwen3_moe", "qwen3moe"), ("mixtral", "llama"), ("qwen2_moe", "qwen2moe")]
)
def test_experts_are_written_as_stacked_tensors(tmp_path, family, architecture):
    settings = {"head_dim": 8, "norm_topk_prob": False} if family == "qwen2_moe" else {}
    model = tiny_moe_model(family, **settings)
    path = export_gguf(model, tmp_path / "m.gguf", "F32", include_tokenizer=False)
    meta, reader = fields(path)
    assert meta["general.architecture"] == architecture
    assert meta[f"{architecture}.expert_count"] == 6 and meta[f"{architecture}.expert_used_count"] == 2
    tensors, experts = tensors_of(reader), model.model.layers[1].mlp.experts
    gate_up = experts.gate_up_proj.detach().numpy()  # experts × (gate rows, then up rows) × hidden
    np.testing.assert_array_equal(tensors["blk.1.ffn_gate_exps.weight"], gate_up[:, :32])
    np.testing.assert_array_equal(tensors["blk.1.ffn_up_exps.weight"], gate_up[:, 32:])
    np.testing.assert_array_equal(tensors["blk.1.ffn_down_exps.weight"], experts.down_proj.detach().numpy())
    assert tensors["blk.1.ffn_gate_inp.weight"].shape == (6, 48)
    if family == "qwen2_moe":
        assert meta["qwen2moe.expert_shared_feed_forward_length"] == 40
        assert tensors["blk.1.ffn_gate_inp_shexp.weight"].shape == (48,)
        assert "output.weight" in tensors  # llama.cpp's qwen2moe reads a head even when it is tied
    else:
        assert meta.get(f"{architecture}.expert_feed_forward_length", 32) == 32


@pytest.mark.parametrize(
    "family, settings, message",
    [
        ("qwen3_moe", {"mlp_only_layers": [1]}, r"Layers \[1\] .* are dense"),
        ("qwen2_moe", {"head_dim": 8}, "norm_topk_prob=True.*keeps the top-k"),
        ("qwen2_moe", {"norm_topk_prob": False}, "query projection is hidden × hidden"),
    ],
)
def test_experts_llama_cpp_would_compute_differently_are_refused(tmp_path, family, settings, message):
    with pytest.raises(MinitronError, match=message):
        export_gguf(tiny_moe_model(family, **settings), tmp_path / "m.gguf", include_tokenizer=False)
    assert not list(tmp_path.iterdir())
