import json

import pytest

from bench.seed_table import main, seed_table

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
    assert lines[0] == "| # | setting | pipeline | generator or set | split | seed 0 | seed 1 | seed 2 | mean |"
    assert lines[2] == "| 1 | W4A4:paper | a | - | report | 1.00 | - | 2.00 | 1.50 (n=2) |"
    assert lines[3] == "| 2 | W4A4:paper | a | - | select | - | 7.00 | - | 7.00 (n=1) |"  # never averaged with report
    assert lines[4] == "| 3 | W4A4:paper | a | g2 | report | 3.00 | - | - | 3.00 (n=1) |"  # another generator's row
    assert lines[5] == "| 4 | W4A4:paper | b | - | report | - | 0.50 | - | 0.50 (n=1) |"
    assert len(lines) == 6  # the gdfq row is left out


def test_split_filter_and_no_matching_rows():
    assert len(seed_table(ROWS, method="gznq", split="select").splitlines()) == 3
    with pytest.raises(ValueError, match="no rows match"):
        seed_table(ROWS, contains="nothing like this")


def test_paired_difference_from_a_line_over_common_seeds():
    rows = [{"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": "pixels", "split": "select",
             "seed": s, "drop": d, "results": tag}
            for tag, drops in (("base", (1.0, 2.0, 0.5)), ("new", (0.5, 1.0, 0.5, 9.0))) for s, d in enumerate(drops)]
    lines = seed_table(rows, against=1).splitlines()
    assert lines[0].startswith("| # | results | setting |") and lines[0].endswith("| mean | paired vs line 1 |")
    assert lines[2] == "| 1 | base | W4A4:paper | pixels | - | select | 1.00 | 2.00 | 0.50 | - | 1.17 (n=3) | +0.00 +- 0.00 (n=3) |"
    # seeds 0-2 in common (seed 3 has no partner): differences -0.5, -1.0, 0.0: mean -0.5, SE 0.5 / sqrt(3)
    assert lines[3].endswith("| 0.50 | 1.00 | 0.50 | 9.00 | 2.75 (n=4) | -0.50 +- 0.29 (n=3) |")
    with pytest.raises(ValueError, match="lines 1 to 2"):
        seed_table(rows, against=3)


def test_the_command_reads_several_files_and_refuses_a_missing_one(tmp_path, capsys):
    import json

    from bench.seed_table import main

    for name, drop in (("a", 1.0), ("b", 0.25)):
        (tmp_path / name).mkdir()
        row = ROWS[0] | {"drop": drop}
        (tmp_path / name / "results.json").write_text(json.dumps({"rows": [row]}))
    main([str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"), "--against", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[3] == "| 2 | b | W4A4:paper | a | - | report | 0.25 | 0.25 (n=1) | -0.75 (n=1) |"
    files = [str(tmp_path / n / "results.json") for n in ("a", "b")]
    with pytest.raises(SystemExit):  # one pool: both files hold seed 0 of the same line
        main(files + ["--merge"])
    assert "two rows for seed 0 of W4A4:paper / a / - / report" in capsys.readouterr().err
    (tmp_path / "b" / "results.json").write_text(json.dumps({"rows": [ROWS[0] | {"drop": 0.25, "seed": 5}]}))
    main(files + ["--merge"])
    assert capsys.readouterr().out.splitlines()[2] == "| 1 | W4A4:paper | a | - | report | 1.00 | 0.25 | 0.62 (n=2) |"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json")])
    assert "is not a file" in capsys.readouterr().err


def test_pixel_sets_named_by_seed_make_one_line_and_other_sets_their_own():
    def row(pixels, seed, drop, **extra):
        return {"model": "cifar10_resnet20", "setting": "W4A4:paper", "method": "pixels", "pipeline": "pixels",
                "split": "select", "seed": seed, "drop": drop, "pixels": pixels, **extra}

    old = row(None, 0, 9.0, command="python -m bench.dfq_bench --methods pixels --pixels runs/pix_c_s0 --seed 0")
    del old["pixels"]  # written before the field: its command names the set
    rows = [row("runs/pix_a_s0", 0, 1.0), row("runs/pix_a_s1", 1, 2.0), row("runs/pix_b_s0", 0, 3.0), old]
    lines = seed_table(rows).splitlines()
    assert lines[2] == "| 1 | W4A4:paper | pixels | runs/pix_a_s* | select | 1.00 | 2.00 | 1.50 (n=2) |"
    assert lines[3] == "| 2 | W4A4:paper | pixels | runs/pix_b_s* | select | 3.00 | - | 3.00 (n=1) |"
    assert lines[4] == "| 3 | W4A4:paper | pixels | runs/pix_c_s* | select | 9.00 | - | 9.00 (n=1) |"


def test_files_in_folders_of_one_name_are_refused_unless_merged(tmp_path, capsys):
    import json

    from bench.seed_table import main

    files = []
    for parent in ("x", "y"):
        (tmp_path / parent / "bench").mkdir(parents=True)
        files.append(tmp_path / parent / "bench" / "results.json")
        files[-1].write_text(json.dumps({"rows": [ROWS[0] | {"seed": len(files)}]}))
    with pytest.raises(SystemExit):
        main([str(f) for f in files])
    assert "would share a label" in capsys.readouterr().err
    main([str(f) for f in files] + ["--merge"])
    assert "1.00 | 1.00 | 1.00 (n=2)" in capsys.readouterr().out


def test_another_figure_than_the_drop_with_its_places_and_rows_without_it_left_out():
    rows = [{"model": "m", "setting": "W4A4:paper", "method": "gznq", "pipeline": p, "split": "select", "seed": s,
             "drop": 1.0, **({"output_kl": kl} if kl is not None else {})}
            for p, s, kl in (("a", 0, 0.1), ("a", 1, 0.12), ("b", 0, 0.13), ("b", 1, 0.16), ("c", 0, None))]
    lines = seed_table(rows, value="output_kl", against=1).splitlines()
    assert lines[0].endswith("| seed 0 | seed 1 | mean output_kl | paired vs line 1 |")
    assert lines[2] == "| 1 | W4A4:paper | a | - | select | 0.1000 | 0.1200 | 0.1100 (n=2) | +0.0000 +- 0.0000 (n=2) |"
    # differences 0.03 and 0.04: mean 0.035, SE 0.005
    assert lines[3] == "| 2 | W4A4:paper | b | - | select | 0.1300 | 0.1600 | 0.1450 (n=2) | +0.0350 +- 0.0050 (n=2) |"
    assert len(lines) == 4  # the row without the figure (written before it existed) is left out
    assert "| 3 | W4A4:paper | c |" in seed_table(rows)  # but is there for the drop
    with pytest.raises(ValueError, match="no rows with fixed match"):
        seed_table(rows, value="fixed")
    with pytest.raises(ValueError, match="unknown value 'top5'"):
        seed_table(rows, value="top5")


def test_any_steps_makes_the_matched_noise_rows_one_line_paired_with_the_generators():
    rows = [{"model": "m", "setting": "W4A4:paper", "method": m, "pipeline": p, "split": "report", "seed": s, "drop": d}
            for m, p, s, d in (("gznq", "gznq", 0, -0.3), ("gznq", "gznq", 1, -0.1),
                               ("noise", "noise(141 steps)", 0, -0.1), ("noise", "noise(130 steps)", 1, -0.5),
                               ("noise", "noise(64 steps)[x]", 0, 0.4))]
    apart = seed_table(rows).splitlines()
    assert len(apart) == 2 + 4  # without it each step count is its own line
    lines = seed_table(rows, any_steps=True, against=1).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2] == "| 1 | W4A4:paper | gznq | - | report | -0.30 | -0.10 | -0.20 (n=2) | +0.00 +- 0.00 (n=2) |"
    # noise - gznq: +0.2 and -0.4: mean -0.1, SE 0.3
    assert lines[3] == "| 2 | W4A4:paper | noise(130,141 steps) | - | report | -0.10 | -0.50 | -0.30 (n=2) | -0.10 +- 0.30 (n=2) |"
    assert lines[4].startswith("| 3 | W4A4:paper | noise(64 steps)[x] |")  # another pipeline stays apart
    rows.append(dict(rows[2], pipeline="noise(150 steps)"))  # a second seed-0 noise row, pooled with the first
    with pytest.raises(ValueError, match="pooled by --any-steps"):
        seed_table(rows, any_steps=True)


def test_the_command_passes_any_steps_on(tmp_path, capsys):
    rows = [{"model": "m", "setting": "W4A4:paper", "method": "noise", "pipeline": f"noise({n} steps)",
             "split": "report", "seed": s, "drop": d} for s, n, d in ((0, 141, -0.1), (1, 142, -0.5))]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": rows}))
    main([str(path), "--any-steps"])
    assert "| 1 | W4A4:paper | noise(141,142 steps) | - | report | -0.10 | -0.50 | -0.30 (n=2) |" in capsys.readouterr().out
