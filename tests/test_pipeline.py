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
