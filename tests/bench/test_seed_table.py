import pytest

from bench.seed_table import seed_table

ROWS = [
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 1.0},  # before the seed field
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "a", "drop": 2.0, "seed": 2},
    {"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "b", "drop": 0.5, "seed": 1},
    {"model": "m", "setting": "W4A4:paper", "method": "gdfq", "pipeline": "a", "drop": 9.0, "seed": 1},
]


def test_one_line_per_pipeline_with_its_seeds_and_mean():
    lines = seed_table(ROWS, method="gznq").splitlines()
    assert lines[0] == "| setting | pipeline | seed 0 | seed 1 | seed 2 | mean |"
    assert lines[2] == "| W4A4:paper | a | 1.00 | - | 2.00 | 1.50 (n=2) |"
    assert lines[3] == "| W4A4:paper | b | - | 0.50 | - | 0.50 (n=1) |"
    assert len(lines) == 4  # the gdfq row is left out


def test_no_matching_rows_is_an_error():
    with pytest.raises(ValueError, match="no rows match"):
        seed_table(ROWS, contains="nothing like this")
