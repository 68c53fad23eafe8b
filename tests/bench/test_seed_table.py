import pytest

from bench.seed_table import seed_table

ROWS = [
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 1.0, "seed": 0, "split": "report"},
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 2.0, "seed": 2, "split": "report"},
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "b", "drop": 0.5, "seed": 1, "split": "report"},
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 7.0, "seed": 1, "split": "select"},
    {"model": "m", "setting": "W4A4:paper", "method": "gdfq", "pipeline": "a", "drop": 9.0, "seed": 1, "split": "report"},
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 3.0, "seed": 0, "split": "report",
     "generator": "g2"},
]


def test_one_line_per_pipeline_and_split_with_its_seeds_and_mean():
    lines = seed_table(ROWS, method="gznq").splitlines()
    assert lines[0] == "| setting | pipeline | generator | split | seed 0 | seed 1 | seed 2 | mean |"
    assert lines[2] == "| W4A4:paper | a | - | report | 1.00 | - | 2.00 | 1.50 (n=2) |"
    assert lines[3] == "| W4A4:paper | a | - | select | - | 7.00 | - | 7.00 (n=1) |"  # never averaged with report
    assert lines[4] == "| W4A4:paper | a | g2 | report | 3.00 | - | - | 3.00 (n=1) |"  # another generator's row
    assert lines[5] == "| W4A4:paper | b | - | report | - | 0.50 | - | 0.50 (n=1) |"
    assert len(lines) == 6  # the gdfq row is left out


def test_split_filter_and_no_matching_rows():
    assert len(seed_table(ROWS, method="gznq", split="select").splitlines()) == 3
    with pytest.raises(ValueError, match="no rows match"):
        seed_table(ROWS, contains="nothing like this")
