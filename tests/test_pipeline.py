import dataclasses

import pytest

from dfq.quant import QuantConfig
from dfq.quant.reconstruct import ReconstructConfig
from gznq.distill import DistillConfig
from gznq.pipeline import PipelineConfig, run_pipeline


def test_distillation_keeps_the_weight_grids_of_a_reconstruction_and_learns_them_otherwise(cifar_train_dir,
                                                                                          weights_dir):
    def run(*methods):
        config = PipelineConfig(
            source=f"real:{cifar_train_dir}", checkpoint=str(weights_dir / "resnet20-12fca82f.th"),
            quant=QuantConfig(w_bits=4, a_bits=4, protocol="paper"), methods=methods, calib_images=16,
            batch_size=16, recon=ReconstructConfig(iterations=1), distill=DistillConfig(steps=1, batch_size=8),
            workers=0, progress=False)
        return run_pipeline(config).report

    assert run("reconstruct", "distill")["distill_config"]["weight_scales"] is False
    assert run("distill")["distill_config"]["weight_scales"] is True


def test_paths_are_accepted_and_recorded_as_strings(tmp_path):
    import json

    config = PipelineConfig(source=f"real:{tmp_path}", out=tmp_path / "student", eval_data=tmp_path,
                            image_cache=tmp_path / "cache")
    assert (config.out, config.eval_data, config.image_cache) == (
        str(tmp_path / "student"), str(tmp_path), str(tmp_path / "cache"))
    assert json.loads(json.dumps(config.to_dict()))["out"] == str(tmp_path / "student")


def test_a_resumed_run_recorded_before_a_refine_field_existed_is_the_same_run():
    from gznq.pipeline import _check_resumed, _run_defining

    config = PipelineConfig(source="generator:runs/g", methods=("distill",))
    saved = _run_defining(config)
    saved["refine"] = {k: v for k, v in saved["refine"].items() if k not in ("spread_weight", "precision")}
    _check_resumed(config, {"run": {"config": saved}})  # fields added since count as their defaults
    other = dataclasses.replace(config, refine=dataclasses.replace(config.refine, precision="bfloat16"))
    with pytest.raises(ValueError, match=r"started with other options \(refine\)"):
        _check_resumed(other, {"run": {"config": saved}})
    saved["refine"]["crop_scale"] = 1.0  # a field the run did record, changed
    with pytest.raises(ValueError, match=r"started with other options \(refine\)"):
        _check_resumed(config, {"run": {"config": saved}})


def test_a_resumed_run_counts_a_missing_refine_field_at_its_first_value(monkeypatch):
    """Had precision been added as bfloat16 (its first value), a run recorded before it existed refined in
    bfloat16: resuming it with today's float32 default is another run."""
    from gznq import sources
    from gznq.pipeline import _check_resumed, _run_defining

    config = PipelineConfig(source="generator:runs/g", methods=("distill",))
    saved = _run_defining(config)
    saved["refine"] = {k: v for k, v in saved["refine"].items() if k != "precision"}
    _check_resumed(config, {"run": {"config": saved}})
    monkeypatch.setitem(sources.LATER_REFINE_FIELDS_FIRST_VALUE, "precision", "bfloat16")
    with pytest.raises(ValueError, match=r"started with other options \(refine\)"):
        _check_resumed(config, {"run": {"config": saved}})
    bf16 = dataclasses.replace(config, refine=dataclasses.replace(config.refine, precision="bfloat16"))
    _check_resumed(bf16, {"run": {"config": saved}})
