"""Accuracy guard: the pipeline on real images must keep ResNet-20's W4A4 drop inside a measured band.

`python -m pytest -q -s tests/test_accuracy_guard.py` prints both drops.

Bands measured with this exact configuration (seed 0, 512 real training images in batches of 256, 2,000
images of the selection split, the first 200 of each class); see docs/benchmarks.md, "Accuracy guard".
Calibration alone under `deploy` is where the range observers show: with the strided sample of before the
observer fix (which saw one image column at batch 256) the drop was 8.55 (seed 0) and 9.00 (seed 1), against
5.30 and 5.70 fixed.
"""

import pytest

from dfq.models import create_teacher
from dfq.quant import QuantConfig
from dfq.quant.reconstruct import ReconstructConfig
from gznq.pipeline import PipelineConfig, run_pipeline

TEACHER_TOP1 = 80.65  # on these 2,000 images: `eval.py --model cifar10_resnet20 --split select --limit 2000`
# measured 5.30 with additions and pooling in float, 5.95 since deploy quantizes them (8-bit residual stream);
# the strided observer gave 8.55
CALIBRATE_DEPLOY_BAND = (3.5, 6.5)
RECONSTRUCT_PAPER_BAND = (0.0, 2.5)  # measured 1.55 on two threads, 0.90 on one (reconstruction varies by threads)


def _run(teacher, train_dir, test_dir, protocol, methods=(), **kw):
    config = PipelineConfig(
        source=f"real:{train_dir}", quant=QuantConfig(w_bits=4, a_bits=4, protocol=protocol, weight_observer="mse",
                                                      act_observer="mse"),
        methods=methods, calib_images=512, batch_size=256, seed=0, eval_data=str(test_dir), eval_split="select",
        eval_limit=2000, progress=False, workers=0, **kw)
    return run_pipeline(config, teacher=teacher).report


@pytest.mark.slow
def test_w4a4_on_real_images_stays_in_its_band(weights_dir, cifar_train_dir, cifar_test_dir):
    teacher = create_teacher("cifar10_resnet20", checkpoint=weights_dir / "resnet20-12fca82f.th")
    calibrated = _run(teacher, cifar_train_dir, cifar_test_dir, "deploy")
    # the same images and teacher as measured, and a student that is quantized at all (a drop near 0 at W4A4
    # deploy after calibration alone would mean quantizers left off)
    assert calibrated["num_images"] == 2000 and calibrated["teacher_top1"] == TEACHER_TOP1
    print(f"\nguard: deploy calibration drop {calibrated['drop']:.2f} (agreement {calibrated['agreement']:.2f})")
    assert CALIBRATE_DEPLOY_BAND[0] <= calibrated["drop"] <= CALIBRATE_DEPLOY_BAND[1], calibrated["drop"]
    reconstructed = _run(teacher, cifar_train_dir, cifar_test_dir, "paper", ("reconstruct",),
                         recon=ReconstructConfig(iterations=100))
    print(f"guard: paper reconstruction drop {reconstructed['drop']:.2f} (agreement {reconstructed['agreement']:.2f})")
    assert RECONSTRUCT_PAPER_BAND[0] <= reconstructed["drop"] <= RECONSTRUCT_PAPER_BAND[1], reconstructed["drop"]
