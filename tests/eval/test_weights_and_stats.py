"""Weight references (local path, hub cache) and the statistics of the report."""

from __future__ import annotations

import pytest

from critifusion_tui.eval import stats
from critifusion_tui.eval.weights import Need, WeightsMissing, resolve


def fake_cache(root, repo, commit, files):
    """The standard HF cache layout: refs/main names a snapshot holding the files."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in files:
        (snap / name).write_text("x")
    return snap


def test_hub_references_resolve_in_the_cache_with_their_commit(tmp_path):
    snap = fake_cache(tmp_path, "tiny-org/tiny-hps", "abc123def4567890", ["HPS.pt"])
    folder = fake_cache(tmp_path, "tiny-org/tiny-clip", "0011223344556677", ["config.json", "processor_config.json"])
    got = resolve(
        "hpsv2",
        [
            Need("ckpt", "tiny-org/tiny-hps/HPS.pt", "file"),
            Need(
                "clip",
                "tiny-org/tiny-clip",
                "folder",
                ("config.json", ("preprocessor_config.json", "processor_config.json")),
            ),
        ],
        cache_dir=str(tmp_path),
    )
    assert got.paths == {"ckpt": snap / "HPS.pt", "clip": folder}
    assert got.prints == {"ckpt": "tiny-org/tiny-hps/HPS.pt@abc123def456", "clip": "tiny-org/tiny-clip@001122334455"}


def test_every_missing_piece_in_one_error_with_its_command(tmp_path):
    fake_cache(tmp_path, "tiny-org/tiny-clip", "0011223344556677", ["config.json"])
    with pytest.raises(WeightsMissing) as caught:
        resolve(
            "imagereward",
            [
                Need("checkpoint", "tiny-org/ir/IR.pt", "file"),
                Need("med", "tiny-org/ir/med.json", "file"),
                Need("tok", "tiny-org/tiny-clip", "folder", ("config.json", "vocab.txt"), ("config.json", "vocab.txt")),
                Need("local", str(tmp_path / "nope.pt"), "file"),
            ],
            cache_dir=str(tmp_path),
        )
    err = caught.value
    assert len(err.problems) == 4
    assert err.commands == [
        "hf download tiny-org/ir IR.pt med.json",
        "hf download tiny-org/tiny-clip config.json vocab.txt",
    ]
    assert str(err).startswith("imagereward: cannot load its weights:")
    assert f"no such file {tmp_path / 'nope.pt'}" in str(err)


def test_a_local_file_changes_its_fingerprint_when_rewritten(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"1234")
    first = resolve("aesthetic", [Need("w", str(path), "file")]).fingerprint()
    path.write_bytes(b"123456")
    assert resolve("aesthetic", [Need("w", str(path), "file")]).fingerprint() != first


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_data():
    few = [1.0, 2.0, 3.0, 4.0]
    many = few * 25
    lo, hi = stats.bootstrap_ci(few)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    lo2, hi2 = stats.bootstrap_ci(many)
    assert lo < lo2 < 2.5 < hi2 < hi
    assert stats.bootstrap_ci([5.0]) is None  # one value: no interval, not a certain one
    assert stats.bootstrap_ci(few) == (lo, hi)  # seeded: the same scores print the same interval


def test_paired_difference_and_win_rate():
    result = stats.paired([2.0, 3.0, 1.0, 5.0], [1.0, 3.0, 2.0, 1.0])
    assert result["mean"] == pytest.approx((1 + 0 - 1 + 4) / 4)
    assert result["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert result["n"] == 4
