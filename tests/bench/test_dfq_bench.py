import pytest

from bench.dfq_bench import Setting, apply_overrides, parse_args, parse_overrides, settings
from gznq.pipeline import PipelineConfig


def test_overrides_reach_nested_configs_and_are_checked():
    overrides = parse_overrides("refine.crop_scale=1.0, recon_augment=0, distill.generator_betas=(0.5, 0.9)")
    config = apply_overrides(PipelineConfig(source="real:."), overrides)
    assert (config.refine.crop_scale, config.recon_augment, config.distill.generator_betas) == (1.0, 0, (0.5, 0.9))
    with pytest.raises(ValueError, match="RefineConfig has no field 'crop'"):
        apply_overrides(PipelineConfig(source="real:."), {"refine.crop": 1})


@pytest.mark.parametrize("argv, message", [
    (["--split", "report", "--set", "recon_augment=0"], "--split report runs the defaults as shipped"),
    (["--split", "select", "--set", "eval_split='report'"], "eval_split are set by the bench's own options"),
    (["--split", "select", "--set", "seed=5"], "seed are set by the bench's own options"),
    (["--split", "select", "--set", "calib_images=abc"], "'abc' is not a Python literal"),
    (["--split", "select", "--set", "recon.lr=-1"], "reconstruction needs lr > 0"),
    (["--split", "select", "--methods", "gznq,magic"], "unknown methods ['magic']"),
    (["--split", "select", "--methods", "gznq-raw", "--set", "refine.steps=10"], "gznq-raw rows are the raw samples"),
    (["--split", "select", "--methods", "noise", "--noise-steps", "0"], "--noise-steps must be positive"),
])
def test_the_bench_refuses_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv + ["--out", "unused"])
    assert message in capsys.readouterr().err


W4A4 = Setting(4, 4, "paper")


def test_settings_take_unequal_widths_and_refuse_malformed_ones():
    assert settings("W2A4:paper, W4A4:deploy") == [Setting(2, 4, "paper"), Setting(4, 4, "deploy")]
    assert settings("W2A4:paper")[0].label == "W2A4:paper"
    assert len(settings(None)) == 6 and all(s.w_bits == s.a_bits for s in settings(None))
    for bad in ("W4:paper", "W4A4", "W4A4:fast", "4A4:paper"):
        with pytest.raises(ValueError, match="look like W4A4:paper"):
            settings(bad)


def test_noise_rows_get_the_refinement_steps_that_fill_the_generators_seconds():
    from bench.dfq_bench import Bench

    bench = Bench.__new__(Bench)
    bench.args = parse_args(["--split", "select", "--methods", "gznq,noise", "--out", "unused"])
    bench.gen_seconds, bench.gznq_rows = 300.0, {}
    with pytest.raises(ValueError, match="put gznq before noise"):
        bench.noise_steps(W4A4, 50)
    bench.gznq_rows[W4A4] = {"image_seconds": 150.0}
    assert bench.noise_steps(W4A4, 50) == 150  # 50 steps cost 150 s, so 450 s buy 150 steps
    bench.args.noise_steps = 70
    assert bench.noise_steps(W4A4, 50) == 70


def test_raw_and_noise_rows_are_configured_as_they_are_named():
    from bench.dfq_bench import Bench

    bench = Bench.__new__(Bench)
    bench.args = parse_args(["--split", "select", "--methods", "gznq,gznq-raw,noise", "--set", "refine.crop_scale=1.0",
                             "--generator", "runs/g", "--out", "unused"])
    bench.overrides, bench.gen_seconds = parse_overrides(bench.args.overrides), 300.0
    bench.gznq_rows = {W4A4: {"image_seconds": 150.0}}
    gznq, gen_seconds = bench.config("gznq", W4A4)
    raw, _ = bench.config("gznq-raw", W4A4)
    noise, noise_seconds = bench.config("noise", W4A4)
    assert (gznq.source, gznq.refine_config().steps, gznq.refine.crop_scale, gen_seconds) == (
        "generator:runs/g", 64, 1.0, 300.0)
    assert (raw.source, raw.refine.steps, raw.refine.crop_scale) == ("generator:runs/g", 0, 1.0)
    assert (noise.source, noise.refine.steps, noise.refine.crop_scale, noise_seconds) == ("noise", 192, 1.0, 0.0)
    assert noise.methods == gznq.methods == ("calibrate", "reconstruct")


def test_rows_of_other_pixel_sets_are_kept_and_a_rerun_replaces_its_own():
    from bench.dfq_bench import KEY, merged

    base = {k: None for k in KEY} | {"model": "cifar10_resnet20", "setting": "W4A4:paper", "method": "pixels",
                                      "pipeline": "pixels", "split": "select", "seed": 0}
    rows = merged([], base | {"pixels": "runs/a", "drop": 1.0})
    rows = merged(rows, base | {"pixels": "runs/b", "drop": 2.0})
    assert [r["drop"] for r in rows] == [1.0, 2.0]  # another set: a row of its own
    rows = merged(rows, base | {"pixels": "runs/a/", "drop": 3.0})  # the same set, spelled otherwise
    assert [(r["pixels"], r["drop"]) for r in rows] == [("runs/b", 2.0), ("runs/a/", 3.0)]  # the re-run replaced
    # rows written before the field existed: the set their command names, or the bench's default set
    old = {k: v for k, v in base.items() if k != "pixels"}
    old_a = old | {"drop": 4.0, "command": "python -m bench.dfq_bench --methods pixels --pixels runs/a --seed 0"}
    old_default = old | {"drop": 5.0, "command": "python -m bench.dfq_bench --methods pixels --seed 0"}
    rows = merged([old_a, old_default], base | {"pixels": "runs/a", "drop": 6.0})
    assert [r["drop"] for r in rows] == [5.0, 6.0]
    rows = merged(rows, base | {"pixels": "runs/pixels_resnet20", "drop": 7.0})
    assert [r["drop"] for r in rows] == [6.0, 7.0]
