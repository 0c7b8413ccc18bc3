"""Joining a built-in model's GGUF from chunk packages: found without importing them, checked, cached."""

import hashlib
import sys

import pytest

from hf_minitron import MinitronError
from hf_minitron.builtin_parts import joined_gguf


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two fake chunk packages on sys.path whose __init__ would fail if anything imported them."""
    chunks = [b"GGUF first half|", b"second half"]
    for i, data in enumerate(chunks):
        package = tmp_path / "site" / f"fake_chunk{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('chunk packages are never imported')\n")
        (package / "data" / f"model.gguf.part{i}").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    entry = {
        "pip": "pip install fake-model",
        "gguf_file": "model.gguf",
        "parts": tuple((f"fake_chunk{i}", f"data/model.gguf.part{i}") for i in range(2)),
        "sha256": hashlib.sha256(b"".join(chunks)).hexdigest(),
    }
    return entry, b"".join(chunks)


def test_chunks_are_joined_once_into_the_cache(chunk_packages, tmp_path):
    entry, whole = chunk_packages
    path = joined_gguf("fake", entry)
    assert path == tmp_path / "cache" / "hf_minitron" / "builtin" / "fake" / "model.gguf"
    assert path.read_bytes() == whole
    assert "fake_chunk0" not in sys.modules
    stamp = path.stat().st_mtime_ns
    assert joined_gguf("fake", entry) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]  # no partial file left behind


def test_a_damaged_chunk_or_a_missing_package_is_refused_with_the_install_command(chunk_packages, tmp_path):
    entry, _ = chunk_packages
    with pytest.raises(MinitronError, match="does not match its published checksum"):
        joined_gguf("fake", {**entry, "sha256": "0" * 64})
    assert not list((tmp_path / "cache").rglob("*.gguf*"))
    missing = {**entry, "parts": (*entry["parts"], ("no_such_chunk_package", "data/x"))}
    with pytest.raises(MinitronError, match="pip install fake-model"):
        joined_gguf("fake", missing)
