"""Offline teacher logits: sparse KL vs references, cache ≡ online teacher at k = vocab, mismatch detection."""

import copy
import json

import datasets
import pytest
import torch

from hf_minitron import MinitronError
from hf_minitron.cli import main
from hf_minitron.distillation import DistillationConfig, DistillationTrainer
from hf_minitron.distillation.losses import plain_logit_loss
from hf_minitron.distillation.sparse import (
    SparseTeacher,
    plain_sparse_logit_loss,
    sparse_logit_loss,
    topk_with_tail,
)
from hf_minitron.distillation_data.logit_cache import TeacherLogitCache, cache_teacher_logits
from hf_minitron.loading import load_model

from helpers import VOCAB, char_tokenizer, save_tiny, tiny_model

PAIRS = {
    "prompt": [f"Question {i}: what is {i} plus {i}?" for i in range(6)],
    "completion": [f" The answer is {2 * i}, as {i} + {i} = {2 * i}." for i in range(6)],
}


def chat_data():
    return datasets.Dataset.from_dict(PAIRS)


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=3,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=40,
        seed=0,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def write_cache(tmp_path, teacher, tokenizer, **options):
    """The teacher's top-k cache of chat_data() in tmp_path/cache, under the test config."""
    options = {"progress": False, **options}
    return cache_teacher_logits(
        teacher, chat_data(), tmp_path / "cache", config(tmp_path), tokenizer=tokenizer, **options
    )


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("k", [VOCAB, 7])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_loss_matches_references(divergence, k, temperature):
    generator = torch.Generator().manual_seed(0)
    n, width = 29, 12
    student_hidden = torch.randn(n, width, generator=generator, requires_grad=True)
    student_weight = torch.randn(VOCAB, width, generator=generator, requires_grad=True)
    teacher_hidden, teacher_weight = torch.randn(n, width, generator=generator), torch.randn(VOCAB, width)
    weights = torch.rand(n, generator=generator)
    teacher = SparseTeacher(*topk_with_tail(teacher_hidden @ teacher_weight.t(), k, temperature))
    settings = dict(temperature=temperature, divergence=divergence)
    chunked = sparse_logit_loss(student_hidden, student_weight, teacher, weights, chunk_size=8, **settings)
    reference = plain_sparse_logit_loss(student_hidden, student_weight, teacher, weights, **settings)
    grads = torch.autograd.grad(chunked, (student_hidden, student_weight))
    reference_grads = torch.autograd.grad(reference, (student_hidden, student_weight))
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if k == VOCAB:  # the whole distribution: exactly the dense loss
        dense = plain_logit_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, weights, **settings)
        torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)


def test_small_k_is_close_for_a_peaked_teacher():
    """With a teacher as peaked as a trained LM, k = 16 of 96 carries almost all the loss."""
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(64, 8, generator=generator), torch.randn(VOCAB, 8, generator=generator)
    teacher_logits = 4 * torch.randn(64, VOCAB, generator=generator)
    dense = plain_logit_loss(student[0], student[1], teacher_logits, torch.eye(VOCAB), torch.full((64,), 1 / 64))
    sparse = sparse_logit_loss(*student, SparseTeacher(*topk_with_tail(teacher_logits, 16)), torch.full((64,), 1 / 64))
    assert abs(float(sparse) - float(dense)) / float(dense) < 0.05


def test_cache_trains_exactly_like_the_online_teacher(tmp_path):
    tokenizer, teacher = char_tokenizer(), tiny_model(seed=0)
    index = write_cache(
        tmp_path, teacher, tokenizer, top_k=VOCAB, values_dtype="float32", batch_size=4, shard_tokens=30
    )
    assert index["num_rows"] == 6 and len(index["shards"]) > 1 and index["top_k"] == VOCAB
    assert index["bytes_per_token"] > VOCAB * 8  # int32 ids + fp32 values
    student = tiny_model(seed=5)
    online = DistillationTrainer(
        model=copy.deepcopy(student),
        teacher_model=teacher,
        args=config(tmp_path),
        train_dataset=chat_data(),
        processing_class=tokenizer,
    )
    online.train()
    cached = DistillationTrainer(
        model=copy.deepcopy(student),
        args=config(tmp_path, teacher_logits_cache=str(tmp_path / "cache")),
        train_dataset=chat_data(),
        processing_class=tokenizer,
    )
    assert cached.teacher is None
    cached.train()
    for key in ("loss", "kl"):
        assert cached.state.log_history[0][key] == pytest.approx(online.state.log_history[0][key], rel=1e-5)
    for a, b in zip(online.model.parameters(), cached.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def save_teacher(folder, dtype) -> str:
    teacher = tiny_model(seed=0).to(dtype)
    teacher.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("given_as", ["path", "model"])
@pytest.mark.parametrize(
    ("stored", "training", "init_kwargs", "expected"),
    [
        (torch.float32, {"bf16": True}, None, torch.bfloat16),
        (torch.bfloat16, {}, None, torch.float32),
        (torch.float32, {"bf16": True}, {"dtype": "float32"}, torch.float32),
        (torch.bfloat16, {}, '{"dtype": "auto"}', torch.bfloat16),  # a JSON string, as a command line gives it
    ],
    ids=["bf16-training", "fp32-training", "explicit-dtype", "auto"],
)
def test_the_cache_and_the_online_trainer_run_the_teacher_in_one_precision(
    tmp_path, given_as, stored, training, init_kwargs, expected
):
    """One rule for both paths: the training precision unless teacher_model_init_kwargs names a dtype ("auto":
    the checkpoint's own, or a given model's), whatever the teacher was stored in."""
    folder = save_teacher(tmp_path / "teacher", stored)

    def teacher():
        return folder if given_as == "path" else load_model(folder, dtype="auto")

    args = config(tmp_path, use_cpu=True, teacher_model_init_kwargs=init_kwargs, **training)
    index = cache_teacher_logits(teacher(), chat_data(), tmp_path / "cache", args, top_k=4, progress=False)
    online = DistillationTrainer(
        model=tiny_model(seed=5),
        teacher_model=teacher(),
        args=args,
        train_dataset=chat_data(),
        processing_class=char_tokenizer(),
    )
    assert online.teacher.dtype == expected
    assert index["teacher_dtype"] == str(expected).removeprefix("torch.")


def test_fp16_top_k_cache_is_close(tmp_path):
    tokenizer, teacher = char_tokenizer(), tiny_model(seed=0)
    write_cache(tmp_path, teacher, tokenizer, top_k=64)
    student = tiny_model(seed=5)
    losses = []
    for kwargs in ({"teacher_model": teacher}, {}):
        args = config(tmp_path, teacher_logits_cache=None if kwargs else str(tmp_path / "cache"))
        trainer = DistillationTrainer(
            model=copy.deepcopy(student), args=args, train_dataset=chat_data(), processing_class=tokenizer, **kwargs
        )
        batch = next(iter(trainer.get_train_dataloader()))
        losses.append(float(trainer.compute_loss(trainer.model, batch).detach()))
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_mismatches_are_refused_before_training(tmp_path):
    tokenizer, teacher = char_tokenizer(), tiny_model(seed=0)
    write_cache(tmp_path, teacher, tokenizer, top_k=8, shard_tokens=30)
    cached = config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"))

    def trainer(data=None, args=cached, tok=tokenizer, **kwargs):
        return DistillationTrainer(
            model=tiny_model(seed=5), args=args, train_dataset=data or chat_data(), processing_class=tok, **kwargs
        )

    other = datasets.Dataset.from_dict({"prompt": PAIRS["prompt"], "completion": [" no"] * 6})
    with pytest.raises(MinitronError, match="6 of 6 train rows are not in the teacher-logit cache"):
        trainer(other)
    with pytest.raises(MinitronError, match="are not in the teacher-logit cache"):
        trainer(args=config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"), max_length=36))
    shuffled = char_tokenizer()
    vocab = shuffled.get_vocab()
    shuffled.add_tokens(["<extra>"])
    assert len(shuffled.get_vocab()) == len(vocab) + 1
    with pytest.raises(MinitronError, match="made with another tokenizer"):
        trainer(tok=shuffled)
    with pytest.raises(MinitronError, match="temperature"):
        trainer(args=config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"), temperature=2.0))
    with pytest.raises(MinitronError, match="Both a teacher model and a teacher-logit cache"):
        trainer(teacher_model=teacher)
    with pytest.raises(MinitronError, match="packing"):
        config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"), packing=True)
    with pytest.raises(MinitronError, match="intermediate-state"):
        config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"), intermediate_layer_pairs=["auto"])
    (tmp_path / "cache" / "logits-00001.safetensors").unlink()
    with pytest.raises(MinitronError, match="missing 1 shard"):
        trainer()
    with pytest.raises(MinitronError, match="not a teacher-logit cache"):
        trainer(args=config(tmp_path, teacher_logits_cache=str(tmp_path)))
    assert not (tmp_path / "run").exists()


def test_cli_cache_logits_then_distill(tmp_path, capsys):
    teacher = save_tiny(tmp_path / "teacher")
    student = save_tiny(tmp_path / "student", hidden_size=32, head_dim=16, num_attention_heads=2)
    rows = [
        json.dumps({"prompt": p, "completion": c}) for p, c in zip(PAIRS["prompt"], PAIRS["completion"], strict=True)
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "recipe.yaml").write_text(
        f"teacher_model_name_or_path: {teacher}\ndataset_name: {tmp_path / 'data.jsonl'}\nmax_length: 40\n"
        "per_device_train_batch_size: 3\nmax_steps: 2\nreport_to: []\nsave_strategy: 'no'\n"
    )
    common = ["--config", str(tmp_path / "recipe.yaml")]
    assert main(["cache-logits", *common, "--cache_dir", str(tmp_path / "cache"), "--top_k", "16"]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert main(["cache-logits", *common, "--cache_dir", str(tmp_path / "cache")]) == 2  # exists: refused
    assert (
        main(
            [
                "distill",
                *common,
                "--model_name_or_path",
                str(student),
                "--output_dir",
                str(tmp_path / "run"),
                "--teacher_logits_cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "student" / "config.json").is_file()


def test_stored_buckets_sum_to_one_and_a_teacher_matches_its_own_cache(tmp_path):
    """The tail is taken from the log-probabilities as stored (rounded to bf16), so the k + 1 buckets sum to
    one and a teacher's divergence to its own cache is zero, not negative."""
    tokenizer, teacher = char_tokenizer(), tiny_model(seed=0)
    write_cache(tmp_path, teacher, tokenizer, top_k=5, values_dtype="bfloat16")
    logits = torch.randn(50, VOCAB) * 3
    _, logprobs, tail = topk_with_tail(logits, 5, stored_dtype=torch.bfloat16)
    assert torch.equal(logprobs, logprobs.to(torch.bfloat16).float())
    torch.testing.assert_close(logprobs.double().exp().sum(-1) + tail.double(), torch.ones(50, dtype=torch.float64))
    cache = TeacherLogitCache(tmp_path / "cache")
    cached, _ = cache.targets(list(range(len(chat_data()))))
    sums = cached.logprobs.double().exp().sum(-1) + cached.tail.double()
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-6, rtol=0)
    assert cached.vocab_size == VOCAB
    # The teacher itself, scored against these targets: the divergence is zero up to rounding, never below.
    student_logits = torch.full((len(cached.ids), VOCAB), -30.0)
    student_logits.scatter_(1, cached.ids.long(), cached.logprobs)
    rest = (cached.tail / (VOCAB - 5)).clamp(min=1e-30).log()
    student_logits = torch.where(student_logits == -30.0, rest.unsqueeze(1), student_logits)
    hidden, weight = student_logits, torch.eye(VOCAB)
    loss = plain_sparse_logit_loss(hidden, weight, cached, torch.full((len(hidden),), 1 / len(hidden)))
    assert -1e-6 < float(loss) < 1e-4


def test_padded_student_rows_never_count_against_a_cache(tmp_path):
    tokenizer, teacher = char_tokenizer(), tiny_model(seed=0)
    write_cache(tmp_path, teacher, tokenizer, top_k=8)
    student = tiny_model(seed=5, vocab_size=VOCAB + 8, tie_word_embeddings=False)
    losses = []
    for padded_rows in (0.0, 50.0):  # huge logits on the padded rows would dominate any softmax they entered
        model = copy.deepcopy(student)
        with torch.no_grad():
            model.lm_head.weight[VOCAB:] = padded_rows
        args = config(tmp_path, teacher_logits_cache=str(tmp_path / "cache"))
        trainer = DistillationTrainer(model=model, args=args, train_dataset=chat_data(), processing_class=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        losses.append(float(trainer.compute_loss(trainer.model, batch).detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
