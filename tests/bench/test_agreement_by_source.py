import pytest

from bench.agreement_by_source import by_source, source_of


def _row(method, pipeline, agreement, drop, generator=None, setting="W4A4:paper", split="select"):
    return {"method": method, "pipeline": pipeline, "agreement": agreement, "drop": drop, "generator": generator,
            "setting": setting, "split": split}


def test_rows_are_grouped_by_source_and_rows_with_other_options_left_out():
    rows = [_row("real-recon", "real-recon", 93.0, 0.2), _row("real-recon", "real-recon", 92.0, 0.6),
            _row("real-recon", "real-recon[recon_augment=2]", 80.0, 9.0),            # other options: left out
            _row("gznq", "gznq", 92.5, 0.5, "g1"), _row("gznq", "gznq[refine.steps=10]", 92.1, 0.7, "g2"),
            _row("gznq", "gznq", 10.0, 50.0),                                          # no generator named
            _row("noise", "noise(64 steps)", 92.0, 0.0), _row("gznq-raw", "gznq-raw", 91.0, 1.0, "g1"),
            _row("gznq", "gznq", 10.0, 50.0, "g1", split="report"), _row("gznq", "gznq", 10.0, 50.0, "g1", "W3A3:paper")]
    assert source_of(rows[2]) is None and source_of(rows[5]) is None and source_of(rows[6]) == "noise(64 steps)"
    lines = by_source(rows, setting="W4A4:paper", split="select").splitlines()[2:]
    assert lines == ["| real images | 2 | 0 | 92.00 | 93.00 | 92.50 | 0.40 |",
                     "| generator samples, refined | 2 | 2 | 92.10 | 92.50 | 92.30 | 0.60 |",
                     "| noise(64 steps) | 1 | 0 | 92.00 | 92.00 | 92.00 | 0.00 |",
                     "| generator samples, raw | 1 | 1 | 91.00 | 91.00 | 91.00 | 1.00 |"]
    with pytest.raises(ValueError, match="no row of W5A5:paper"):
        by_source(rows, setting="W5A5:paper", split="select")
