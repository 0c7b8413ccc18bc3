"""bench/moe_recovery.py at toy sizes: a teacher is trained and cached, every student is pruned (or
initialised), evaluated and distilled, and the table lists them all; a rerun reuses the cached teacher."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import moe_recovery  # noqa: E402

if not moe_recovery.CORPUS.is_file():
    pytest.skip(f"{moe_recovery.CORPUS} is not there", allow_module_level=True)


def test_smoke_run_measures_every_student_and_reuses_the_teacher(tmp_path):
    results = moe_recovery.main(["--smoke", "--out", str(tmp_path)])
    assert set(results["students"]) == set(moe_recovery.VARIANTS)
    for variant, curve in results["students"].items():
        assert set(curve) == {"0", "128"}, variant
        assert all(value > 1 for value in curve.values()), variant
    params = results["params"]
    teacher = results["teacher"]
    # Half the experts: fewer parameters than the teacher; halving their width as well removes more.
    assert params["reap"]["non_embedding_params"] < teacher["non_embedding_params"]
    assert params["reap_narrow"]["non_embedding_params"] < params["reap"]["non_embedding_params"]
    assert params["random_init"] == params["reap"]
    selections = ("frequency", "mass", "random", "reap")
    assert set(results["overlap"]) == {f"{a}/{b}" for i, a in enumerate(selections) for b in selections[i + 1 :]}
    shares = results["routing_share_kept"]
    assert set(shares) == {"reap", "frequency", "mass", "random", "reap_narrow"}
    # The most-routed experts hold the most routing by construction.
    assert all(0 < share <= shares["frequency"] + 1e-6 for share in shares.values())
    table = (tmp_path / "moe_recovery.md").read_text()
    assert all(label in table for label in moe_recovery.LABELS.values())
    assert json.loads((tmp_path / "results.json").read_text())["students"] == results["students"]

    weights = next((tmp_path / "teacher").glob("*.safetensors"))
    written = weights.stat().st_mtime_ns
    again = moe_recovery.main(["--smoke", "--out", str(tmp_path), "--variants", "reap", "--tokens", "0"])
    assert weights.stat().st_mtime_ns == written  # loaded, not trained again
    assert again["teacher"]["ppl"] == pytest.approx(teacher["ppl"], rel=1e-5)
    assert again["students"]["reap"]["0"] == pytest.approx(results["students"]["reap"]["0"], rel=1e-5)
