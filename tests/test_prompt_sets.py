"""Prompt files in the published prompt sets' formats (written here, never downloaded)."""

from __future__ import annotations

import json

import pytest

from critifusion_tui.prompt_sets import PromptFileError, read_prompt_file

DRAWBENCH = 'Prompts,Category\n"A red colored car.",Colors\n"A black colored car.",Colors\n"A cat, on a mat",Counting\n'
PARTI = "Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\nA cat\tAnimals\tBasic\tn\nA dog\tanimals\tPerspective\t\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_text_skips_blanks_and_comments(tmp_path):
    path = write(tmp_path, "p.txt", "# a comment\n a fox \n\nbears\n")
    assert read_prompt_file(path) == ["a fox", "bears"]


def test_drawbench_csv_with_quoted_commas_and_a_category(tmp_path):
    path = write(tmp_path, "drawbench.csv", "\ufeff" + DRAWBENCH)  # with a spreadsheet's BOM
    assert read_prompt_file(path) == ["A red colored car.", "A black colored car.", "A cat, on a mat"]
    assert read_prompt_file(path, category="colors", limit=1) == ["A red colored car."]


def test_partiprompts_tsv_category_ignores_case(tmp_path):
    path = write(tmp_path, "PartiPrompts.tsv", PARTI)
    assert read_prompt_file(path, category="Animals") == ["A cat", "A dog"]
    with pytest.raises(PromptFileError, match="categories: Abstract, Animals, animals"):
        read_prompt_file(path, category="Vehicles")


def test_hpdv2_json_list(tmp_path):
    path = write(tmp_path, "anime.json", json.dumps(["a girl", "a robot", "a city"]))
    assert read_prompt_file(path, limit=2) == ["a girl", "a robot"]
    with pytest.raises(PromptFileError, match="has none"):
        read_prompt_file(path, category="x")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("x.json", '{"prompts": []}', "JSON list of prompt strings"),
        ("x.json", "[1,", "not valid JSON"),
        ("x.csv", "Text,Category\na,b\n", "no Prompt column"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, text, message):
    with pytest.raises(PromptFileError, match=message):
        read_prompt_file(write(tmp_path, name, text))
