"""Calibration sources, PruningConfig round trips, and the family table."""

import collections
import json

import datasets
import pytest
import torch
from transformers import GPT2Config

from hf_minitron import MinitronError, PruningConfig, build_calibration_set, family_for
from hf_minitron.data import interleave_by_share, iter_texts, mixture_shares
from hf_minitron.families import FAMILIES
from hf_minitron.pipeline.recipe import parse_recipe
from hf_minitron.pruning.plan import compile_plan, match_parameter

from helpers import FAMILY_CONFIGS, MOE_FAMILY_CONFIGS, SHARED_DATA, tiny_model, tiny_moe_model


class CharTokenizer:
    """A tokenizer with the calls calibration uses: one id per character."""

    eos_token_id = 1
    pad_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + (ord(c) % 90) for c in text]}


TEXTS = ["alpha beta gamma " * 4, "delta epsilon " * 5, "", "zeta eta theta " * 3]


def test_every_source_gives_the_same_texts(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(TEXTS))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    datasets.Dataset.from_dict({"text": TEXTS}).to_parquet(str(tmp_path / "a.parquet"))
    expected = [t for t in TEXTS]
    assert list(iter_texts(TEXTS)) == expected
    assert list(iter_texts(str(tmp_path / "a.txt"))) == expected
    assert list(iter_texts(str(tmp_path / "a.jsonl"))) == expected
    assert list(iter_texts(str(tmp_path / "a.parquet"))) == expected
    assert list(iter_texts(datasets.Dataset.from_dict({"body": TEXTS}), text_column="body")) == expected
    assert list(iter_texts(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS})}))) == expected


def test_packed_and_padded_calibration():
    tokenizer = CharTokenizer()
    packed = build_calibration_set(TEXTS, tokenizer, num_samples=100, seq_len=16)
    assert all(len(s) == 16 for s in packed.samples)
    total = sum(len(t) + 1 for t in TEXTS if t)
    assert len(packed) == total // 16
    padded = build_calibration_set(TEXTS, tokenizer, num_samples=100, seq_len=40, packing=False)
    assert [len(s) for s in padded.samples] == [40, 40, 40]
    batch = next(build_calibration_set(["ab", "abcd"], tokenizer, seq_len=8, packing=False).batches(2))
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, 2:].tolist() == [0, 0]


def test_builtin_text_is_split_into_disjoint_parts():
    train = list(iter_texts("builtin:python-docs"))
    heldout = list(iter_texts("builtin:python-docs-heldout"))
    assert len(train) > 3 * len(heldout) > 0
    assert not set(train) & set(heldout)


def test_calibration_mixture_draws_each_share_of_the_samples():
    tokenizer = CharTokenizer()
    assert mixture_shares({"x": 1, "y": 1, "z": 1}, 8) == {"x": 3, "y": 3, "z": 2}
    assert mixture_shares({"x": 0.25, "y": 0.75}, 8) == {"x": 2, "y": 6}
    mixed = build_calibration_set(
        {"builtin:python-docs": 0.5, "builtin:seed-prompts": 0.5}, tokenizer, num_samples=6, seq_len=32
    )
    docs = build_calibration_set("builtin:python-docs", tokenizer, num_samples=3, seq_len=32)
    prompts = build_calibration_set("builtin:seed-prompts", tokenizer, num_samples=3, seq_len=32)
    # Interleaved, so that the first samples (block ranking, a re-fit on fewer samples) hold every source.
    alternating = [sample for pair in zip(docs.samples, prompts.samples, strict=True) for sample in pair]
    assert [s.tolist() for s in mixed.samples] == [s.tolist() for s in alternating]
    assert mixed.description.startswith("50% builtin:python-docs") and "50% builtin:seed-prompts" in mixed.description
    assert len(list(iter_texts("builtin:seed-prompts"))) > 500


@pytest.mark.parametrize("lengths", [(11, 11, 10), (2, 6), (1, 9), (5, 3, 1, 7), (4,)])
def test_interleaving_by_share_keeps_every_prefix_near_each_share(lengths):
    parts = [[(k, i) for i in range(n)] for k, n in enumerate(lengths)]
    merged = interleave_by_share(parts)
    assert sorted(merged) == sorted(item for part in parts for item in part)
    for k, part in enumerate(parts):
        assert [item for item in merged if item[0] == k] == part  # each part keeps its order
    total = sum(lengths)
    for end in range(1, total + 1):
        for k, n in enumerate(lengths):
            count = sum(1 for item in merged[:end] if item[0] == k)
            assert abs(count - n * end / total) <= 1, (end, k, merged)


@pytest.mark.parametrize(
    "mixture, message",
    [({}, "no sources"), ({"builtin:python-docs": 0}, "positive share"), ({"builtin:python-docs": "half"}, "half")],
)
def test_bad_calibration_mixture(mixture, message):
    with pytest.raises(MinitronError, match=message):
        build_calibration_set(mixture, CharTokenizer(), num_samples=4, seq_len=16)
    with pytest.raises(MinitronError, match=message):
        parse_recipe(
            {"name": "x", "teacher": "t", "students": {"w": {"intermediate_size": 8}}, "calibration": {"data": mixture}}
        )


def test_shared_corpus_reads_as_text():
    corpus = SHARED_DATA / "corpus" / "tinyshakespeare.txt"
    calibration = build_calibration_set(str(corpus), CharTokenizer(), num_samples=4, seq_len=64)
    assert len(calibration) == 4 and calibration.num_tokens == 256


@pytest.mark.parametrize(
    "source, kwargs, message",
    [
        ([], {}, "holds no text"),
        (["   ", ""], {}, "holds no text"),
        (["short"], dict(seq_len=64), "too short"),
        ("missing/file.txt", {}, "does not exist"),
        ([{"x": 1}], {}, "only strings"),
        (datasets.Dataset.from_dict({"n": [1, 2]}), {}, "none holds strings"),
        (datasets.Dataset.from_dict({"question": ["q"], "label": ["a"]}), {}, "question, label hold strings"),
        (datasets.Dataset.from_dict({"text": ["a"]}), dict(text_column="body"), "'body' is not in the data"),
    ],
)
def test_bad_calibration_data(source, kwargs, message):
    with pytest.raises(MinitronError, match=message):
        build_calibration_set(source, CharTokenizer(), **kwargs)


def test_pruning_config_round_trip(tmp_path):
    config = PruningConfig(hidden_size=3072, intermediate_size=9216, num_hidden_layers=16, layer_selection="lm_loss")
    path = config.save_pretrained(tmp_path)
    assert path.name == "pruning_config.json"
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert PruningConfig(layers_to_drop=[5, 3]).layer_selection == "explicit"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=0), "positive integer"),
        (dict(hidden_size=3.5), "positive integer"),
        (dict(layer_selection="random"), "Unknown layer_selection"),
        (dict(layer_selection="explicit"), "needs layers_to_drop"),
    ],
)
def test_pruning_config_rejects_bad_values(kwargs, message):
    with pytest.raises(MinitronError, match=message):
        PruningConfig(**kwargs)


def test_pruning_config_rejects_unknown_keys(tmp_path):
    (tmp_path / "pruning_config.json").write_text(json.dumps({"hidden": 10}))
    with pytest.raises(MinitronError, match="Unknown pruning setting"):
        PruningConfig.from_pretrained(tmp_path)


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(MinitronError, match=r"'gpt2' is not supported.*Llama.*Mistral.*Qwen2.*Qwen3.*Gemma3"):
        family_for(GPT2Config())


@pytest.mark.parametrize("family", [*FAMILY_CONFIGS, *MOE_FAMILY_CONFIGS])
def test_family_plans_cover_every_parameter(family):
    if family in MOE_FAMILY_CONFIGS:  # Qwen3-MoE with one dense layer: both kinds of MLP in one model
        extra = {"mlp_only_layers": [1]} if family != "mixtral" else {}
        model = tiny_moe_model(family, tie_word_embeddings=False, **extra)
    else:
        model = tiny_model(
            family,
            tie_word_embeddings=False,
            **({"attention_bias": True, "mlp_bias": True} if family == "llama" else {}),
        )
    plan = compile_plan(family_for(model))
    for name, param in model.named_parameters():
        axes, _ = match_parameter(plan, name)
        assert len(axes) == param.dim(), name
    assert {f.name for f in FAMILIES} == {
        "Llama",
        "Mistral",
        "Qwen2",
        "Qwen3",
        "Qwen2-MoE",
        "Qwen3-MoE",
        "Mixtral",
        "Gemma3",
    }
    assert torch.is_tensor(next(model.parameters()))


def test_training_rows_mix_in_their_shares():
    from hf_minitron.training_data import mix_training_rows

    docs = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(100)]})
    answers = datasets.Dataset.from_dict({"input_ids": [[-i, -i] for i in range(1, 31)]})
    mixed = mix_training_rows({"docs": (docs, 0.5), "answers": (answers, 0.5)})["input_ids"]
    # Every documentation row once; the 30 answers repeated in turn to make up the other half.
    assert len(mixed) == 200 and sorted(r[0] for r in mixed if r[0] >= 0) == list(range(100))
    repeats = collections.Counter(r[0] for r in mixed if r[0] < 0)
    assert repeats == {-i: 4 if i <= 10 else 3 for i in range(1, 31)}  # 100 rows: three rounds and a third
    mixed = mix_training_rows({"docs": (docs, 1), "answers": (answers, 3)})["input_ids"]
    # Three quarters answers: the 100 documentation rows are a quarter of 400, each answer is there 10 times.
    assert len(mixed) == 400 and [r[0] for r in mixed if r[0] >= 0] == list(range(100))
    assert collections.Counter(r[0] for r in mixed if r[0] < 0) == {-i: 10 for i in range(1, 31)}
