"""Issue 10, in the engine: run folders made exclusively, outside text cleaned after JSON
decoding, NaN and black output detected, prompt files decoded or refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from critifusion_tui.engine.answers import read_components
from critifusion_tui.engine.output_checks import black_image, latent_problem, shape_problem
from critifusion_tui.engine.store import RunStore, StoreError
from critifusion_tui.engine.store_paths import check_relative
from critifusion_tui.headless import read_prompts
from critifusion_tui.prompt_sets import PromptFileError


def test_fifty_concurrent_creates_of_one_folder_make_exactly_one_run(tmp_path):
    target = tmp_path / "run"
    made, refused = [], []
    barrier = threading.Barrier(50)

    def create(i: int) -> None:
        barrier.wait()
        try:
            made.append(RunStore.create(prompt=f"p{i}", seed=i, config={}, versions={}, folder=target))
        except StoreError:
            refused.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(refused) == 49
    assert RunStore.open(target).manifest["prompt"] == made[0].manifest["prompt"]


def test_fresh_folders_under_output_dir_are_never_shared(tmp_path):
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    folders = [
        RunStore.create(prompt="a fox", seed=1, config={}, versions={}, output_dir=tmp_path, now=now).folder
        for _ in range(3)
    ]
    assert len(set(folders)) == 3 and [f.name[-2:] for f in folders[1:]] == ["-2", "-3"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.png", "a/../../x", "C:\\x.png", "a\\b.png", "", "x\x1b.png"])
def test_names_that_could_leave_the_folder_are_refused(name):
    with pytest.raises(StoreError, match="stages.base.image"):
        check_relative(name, "stages.base.image")


def test_escapes_written_as_json_unicode_are_removed_after_decoding():
    answer = '{"components": ["a red \\u001b]52;c;ZXZpbA==\\u0007fox", "pine \\u001b[31mtrees", "dawn"]}'
    reading = read_components(answer)
    assert reading.problem is None and reading.items == ("a red fox", "pine trees", "dawn")


def test_deeply_nested_json_in_an_answer_is_not_a_crash():
    reading = read_components("[" * 100_000 + "]" * 100_000)
    assert reading.problem  # unusable, with a reason; no RecursionError


def test_nan_black_and_wrong_size_outputs_are_named():
    import torch
    from PIL import Image

    assert latent_problem(torch.zeros(1, 4, 8, 8)) is None
    assert "2 NaN or infinite" in latent_problem(torch.tensor([[1.0, float("nan"), float("inf")]]))
    assert black_image(Image.new("RGB", (8, 8))) and not black_image(Image.new("RGB", (8, 8), (0, 0, 1)))
    assert shape_problem(torch.zeros(1, 4, 8, 8), 64, 64, 8) is None
    assert "belongs to another run" in shape_problem(torch.zeros(1, 4, 128, 128), 64, 64, 8)


@pytest.mark.parametrize(
    "data",
    ["a fox\nb whale\n".encode("utf-16"), "\ufeffa fox\nb whale\n".encode("utf-8"), b"a fox\r\nb whale"],
    ids=["utf-16-bom", "utf-8-bom", "crlf"],
)
def test_prompt_files_in_common_encodings_are_read(tmp_path, data):
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    assert read_prompts(path) == ["a fox", "b whale"]


def test_control_characters_in_a_prompt_line_are_removed(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"a fox\x1b]0;pwned\x07 at dawn\n")
    assert read_prompts(path) == ["a fox at dawn"]
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PromptFileError):
        read_prompts(Path(path))
