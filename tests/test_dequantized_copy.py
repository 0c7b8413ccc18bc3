"""The built-in teacher's dequantized copy: written on its first load, read on the next ones, the same model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers import AutoModelForCausalLM

from hf_minitron import MinitronError, load_model, load_model_and_tokenizer, load_tokenizer, loading
from hf_minitron.dequantized_copy import COMPLETE, copy_folder, write_copy
from hf_minitron.loading import resolve_model_location

from helpers import tiny_model

TEACHER = "builtin:smollm2-135m"
TEXTS = ["The capital of France is", "def is_prime(n):\n    if n < 2:", "Ünïcödé — 東京 🙂  spaced  out"]


@pytest.fixture(scope="module")
def first_load(tmp_path_factory):
    """The teacher's first load into an empty cache (which writes its copy), the cache, and how many times
    that load parsed the GGUF file; the module's tests then load from the copy."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        parses = counted_gguf_parses(patch)
        loaded = load_model_and_tokenizer(TEACHER)
        yield loaded, cache, len(parses)


@pytest.fixture
def cache(first_load, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(first_load[1]))
    return first_load[1]


def counted_gguf_parses(patch) -> list:
    """Counts how many times transformers reads a GGUF file's metadata from here on."""
    calls = []
    read = gguf_utils.load_gguf_checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return read(*args, **kwargs)

    patch.setattr(gguf_utils, "load_gguf_checkpoint", counted)
    return calls


def gguf_file() -> Path:
    folder, name = resolve_model_location(TEACHER)
    return Path(folder) / name


def test_the_second_load_reads_the_copy_and_gives_the_same_model_config_and_tokenizer(first_load, cache, monkeypatch):
    (first, first_tokenizer), _, parsed_first = first_load
    folder = copy_folder("smollm2-135m", gguf_file())
    assert (folder / COMPLETE).is_file() and folder.is_relative_to(cache)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial folder left beside it
    parses = counted_gguf_parses(monkeypatch)
    second, second_tokenizer = load_model_and_tokenizer(TEACHER)
    # The first load read the file for the config, the weights and the tokenizer; the second not at all.
    assert parsed_first == 3 and parses == []
    state = second.state_dict()
    for name, tensor in first.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[name]), name
    skip = {"transformers_version"}
    assert {k: v for k, v in first.config.to_dict().items() if k not in skip} == {
        k: v for k, v in second.config.to_dict().items() if k not in skip
    }
    assert second.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert second.minitron_source == TEACHER
    for text in TEXTS:
        assert first_tokenizer(text)["input_ids"] == second_tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": TEXTS[0]}]
    assert first_tokenizer.apply_chat_template(chat, tokenize=False) == second_tokenizer.apply_chat_template(
        chat, tokenize=False
    )
    assert (first_tokenizer.pad_token_id, first_tokenizer.eos_token_id) == (
        second_tokenizer.pad_token_id,
        second_tokenizer.eos_token_id,
    )
    ids = torch.tensor([first_tokenizer(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_in_bf16_the_copy_and_a_first_load_give_what_the_gguf_file_gives_in_bf16(cache, monkeypatch):
    folder, name = resolve_model_location(TEACHER)
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).state_dict()
    from_copy = load_model(TEACHER, dtype="bfloat16")
    monkeypatch.setattr(loading, "existing_copy", lambda *args: None)  # as if there were no copy yet
    first = load_model(TEACHER, dtype="bfloat16")  # loads fp32, offers the copy (already there), converts
    for model in (from_copy, first):
        for key, tensor in model.state_dict().items():
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, direct[key]), key


def test_a_copy_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")
    model = tiny_model("llama")

    class FullDisk:
        def save_pretrained(self, folder):
            raise OSError(28, "No space left on device")

    assert write_copy("fake", source, model, FullDisk()) is None  # the load goes on without a copy
    assert "no dequantized copy of builtin:fake kept (OSError" in capsys.readouterr().err
    assert list((tmp_path / "cache" / "hf_minitron" / "builtin" / "fake").iterdir()) == []


def test_a_damaged_copy_says_which_folder_to_delete(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a copy of the module's copy, damaged
    shutil.copytree(cache, tmp_path / "cache")
    folder = copy_folder("smollm2-135m", gguf_file())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MinitronError, match="delete that folder") as raised:
        load_model(TEACHER)
    assert str(folder) in str(raised.value)
    assert load_tokenizer(TEACHER)("Paris")["input_ids"]  # the tokenizer files are intact


def test_a_new_copy_of_a_reinstalled_file_replaces_only_the_old_copies_of_that_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source, other = tmp_path / "model.gguf", tmp_path / "other.gguf"
    source.write_bytes(b"GGUF")
    other.write_bytes(b"GGUF")
    tokenizer = load_tokenizer(TEACHER)
    model = tiny_model("llama")
    old = write_copy("fake", source, model, tokenizer)
    kept = write_copy("fake", other, model, tokenizer)  # another file's copy in the same folder
    users = old.parent / "dequantized-mine"  # not written here: no completion file
    users.mkdir()
    source.write_bytes(b"GGUF, reinstalled")  # another size and time: another copy
    new = write_copy("fake", source, model, tokenizer)
    assert new != old and (new / COMPLETE).is_file()
    assert f"kept a dequantized copy of builtin:fake in {new}" in capsys.readouterr().err
    assert sorted(p.name for p in new.parent.iterdir()) == sorted([new.name, kept.name, users.name])
