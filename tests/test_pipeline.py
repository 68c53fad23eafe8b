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
