import copy
import math

import pytest
import torch
from torch import nn

from dfq.quant import QuantConfig, calibrate, quantize_model
from dfq.quant.adaround import adaround
from dfq.quant.primitives import fake_quantize
from dfq.quant.reconstruct import (
    ReconstructConfig,
    activation_drop,
    find_blocks,
    reconstruct,
    reconstruct_block,
    reconstruction_loss,
)
from tests.quant.helpers import randomize_bn


class TinyRes(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))))


def _setup(bits=3):
    torch.manual_seed(0)
    teacher = randomize_bn(TinyRes())
    images = [torch.randn(32, 3, 8, 8) for _ in range(4)]
    student = quantize_model(teacher, QuantConfig(w_bits=bits, a_bits=bits, protocol="paper"))
    calibrate(student, images)
    return teacher, student, images


def test_blocks_are_sequence_elements_and_lone_layers():
    _, student, _ = _setup()
    assert find_blocks(student) == ["stem", "blocks.0", "blocks.1", "head.2"]


class _Unit(nn.Module):  # a conv-BN-ReLU unit kept as attributes
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _Block(nn.Module):  # two units: a residual block
    def __init__(self, c):
        super().__init__()
        self.a, self.b = _Unit(c), _Unit(c)

    def forward(self, x):
        return x + self.b(self.a(x))


class _Stage(nn.Module):  # blocks in a ModuleList, held by a plain module
    def __init__(self, c, n):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(c) for _ in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _Unit(3)
        self.stages = nn.ModuleList([_Stage(3, 2), _Stage(3, 1)])
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean((2, 3)))


def test_blocks_are_found_in_any_nesting():
    student = quantize_model(_Nested().eval(), QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    # a stage of several blocks is looked into; a stage of one block is that block; a plain unit is one block
    assert find_blocks(student) == ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1", "fc"]


def test_adaround_starts_at_the_float_weight_and_ends_on_the_grid():
    _, student, _ = _setup()
    layer = student.blocks[0][0]
    w0 = layer.weight.detach().clone()
    with adaround([layer]) as (rounding,):
        soft = rounding()
        q = layer.weight_quantizer
        inside = (w0 >= q.range()[0].view(-1, 1, 1, 1)) & (w0 <= q.range()[1].view(-1, 1, 1, 1))
        torch.testing.assert_close(soft[inside], w0[inside], atol=1e-3 * q.scale.max().item(), rtol=0)
        assert layer.quantized_weight() is not None and rounding.alpha.requires_grad
    assert layer.weight_rounding is None
    q = layer.weight_quantizer
    on_grid = fake_quantize(layer.weight, q.scale, q.zero_point, q._qmin, q._qmax, axis=0)
    assert torch.equal(on_grid, layer.weight)  # the hard rounding is exactly representable
    # every weight moved to one of its two neighbouring grid points
    step = q.scale.view(-1, 1, 1, 1)
    assert ((layer.weight - w0).abs() <= step + 1e-6).all()


def _first_block_data(teacher, student, images):
    """The first block's input on the student's quantized path and its target on the teacher's."""
    x = torch.cat(images)
    with torch.no_grad():
        return torch.relu(student.stem(x)), teacher.blocks[0](torch.relu(teacher.stem(x)))


def test_reconstruction_lowers_a_blocks_output_error():
    teacher, student, images = _setup()
    inputs, targets = _first_block_data(teacher, student, images)
    config = ReconstructConfig(iterations=150, drop_prob=0.0)
    flags = {name: p.requires_grad for name, p in student.blocks[0].named_parameters()}
    assert any(flags.values()) and not all(flags.values())  # weights train, quantizer scales do not
    result = reconstruct_block(student.blocks[0], inputs, targets, config)
    assert result.mse_after < 0.9 * result.mse_before  # nearest rounding is already a strong start
    # the same parameters (no rounding variable left behind), each with its requires_grad as before
    assert {name: p.requires_grad for name, p in student.blocks[0].named_parameters()} == flags
    assert not student.blocks[0][0].input_quantizer.learnable


def test_reconstruct_whole_model_improves_logits():
    teacher, student, images = _setup()
    x = torch.cat(images)
    with torch.no_grad():
        err_before = (student(x) - teacher(x)).pow(2).mean().item()
    records = reconstruct(student, teacher, images, ReconstructConfig(iterations=100))
    assert [r["block"] for r in records] == ["stem", "blocks.0", "blocks.1", "head.2"]
    with torch.no_grad():
        err_after = (student(x) - teacher(x)).pow(2).mean().item()
    assert err_after < err_before
    assert sum(r["mse_after"] < r["mse_before"] for r in records) >= 3


def test_default_budget_settles_the_rounding():
    # the rounding variables must travel a few units: at a few hundred steps the default rate gets them
    # there, while BRECQ's 1e-3 (meant for 20,000 steps) leaves nearly all of them where they started
    teacher, student, images = _setup()
    inputs, targets = _first_block_data(teacher, student, images)
    w_nearest = student.blocks[0][0].quantized_weight().detach().clone()
    slow = reconstruct_block(copy.deepcopy(student.blocks[0]), inputs, targets,
                             ReconstructConfig(iterations=200, lr=1e-3))
    result = reconstruct_block(student.blocks[0], inputs, targets, ReconstructConfig(iterations=200))
    assert slow.undecided > 0.5
    assert result.undecided < 0.02
    assert result.mse_after < slow.mse_after
    step = student.blocks[0][0].weight_quantizer.scale.view(-1, 1, 1, 1)
    moved = ((student.blocks[0][0].weight - w_nearest).abs() > 0.5 * step).float().mean()
    assert 0.01 < moved < 0.5  # some weights rounded away from nearest, most not


def test_reconstruction_loss_sums_channels_and_averages_positions():
    out = torch.zeros(2, 3, 4, 5)
    target = torch.zeros(2, 3, 4, 5)
    target[0, :, 0, 0] = 2.0  # one position of one image: 3 channels x 4
    assert reconstruction_loss(out, target).item() == pytest.approx(12.0 / (2 * 4 * 5))
    assert reconstruction_loss(torch.zeros(4, 6), torch.ones(4, 6)).item() == pytest.approx(6.0)


def test_the_classifier_can_keep_its_calibrated_weights():
    teacher, student, images = _setup()
    head = student.head[2].weight.detach().clone()
    records = reconstruct(student, teacher, images, ReconstructConfig(iterations=20, last_block=False))
    assert [r["block"] for r in records] == ["stem", "blocks.0", "blocks.1"]
    assert torch.equal(student.head[2].weight, head)
    lone = quantize_model(nn.Sequential(nn.Linear(4, 3)), QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))
    calibrate(lone, [torch.randn(8, 4)])
    records = reconstruct(lone, nn.Sequential(nn.Linear(4, 3)), [torch.randn(8, 4)],
                          ReconstructConfig(iterations=5, last_block=False))
    assert [r["block"] for r in records] == ["0"]  # a lone layer is still reconstructed


def test_activation_drop_keeps_float_values_at_the_drop_rate_and_cleans_up():
    _, student, images = _setup(bits=2)
    quantizer = student.blocks[0][0].input_quantizer
    x = torch.relu(torch.randn(64, 8, 8, 8))
    quantized = quantizer(x)
    differs = quantized != x  # elements whose quantization changes them
    with activation_drop([quantizer], 0.25, torch.Generator().manual_seed(0)):
        dropped = quantizer(x)
    kept_float = (dropped == x) & differs
    assert torch.equal(dropped[~kept_float], quantized[~kept_float])  # the rest is exactly quantized
    assert abs(kept_float.sum().item() / differs.sum().item() - 0.25) < 0.02
    assert torch.equal(quantizer(x), quantized)  # hooks gone


def test_reconstruction_with_qdrop_still_lowers_the_error():
    teacher, student, images = _setup()
    inputs, targets = _first_block_data(teacher, student, images)
    config = ReconstructConfig(iterations=150, drop_prob=0.5)
    result = reconstruct_block(student.blocks[0], inputs, targets, config)
    assert result.mse_after < 0.9 * result.mse_before
    assert not student.blocks[0][0].input_quantizer._forward_hooks


def test_drop_prob_must_be_a_probability():
    with pytest.raises(ValueError, match="drop_prob must be in"):
        ReconstructConfig(drop_prob=1.0)


def test_first_images_keeps_the_batches_and_cuts_the_last():
    from dfq.quant.reconstruct import first_images

    batches = list(torch.arange(10.0).split(4))
    head = first_images(batches, 6)
    assert [len(x) for x in head] == [4, 2] and torch.equal(torch.cat(head), torch.arange(6.0))
    assert [len(x) for x in first_images(batches, 10)] == [4, 4, 2]
    with pytest.raises(ValueError, match="first 11 images of batches that hold 10"):
        first_images(batches, 11)


def test_feature_mix_blends_inputs_and_takes_the_teacher_block_on_the_same_blend():
    from dfq.quant.reconstruct import FeatureMix, _batch

    torch.manual_seed(0)
    teacher_block = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    inputs, t_inputs = torch.randn(10, 4), torch.randn(10, 4)
    targets = teacher_block(t_inputs).detach()
    idx = torch.arange(4)
    x, y = _batch(inputs, targets, idx, FeatureMix(teacher_block, t_inputs, 0.5), torch.Generator().manual_seed(1))
    assert torch.equal(x[2:], inputs[2:4]) and torch.equal(y[2:], targets[2:4])  # the rest untouched
    for row in range(2):  # each blended row is lam * a + (1 - lam) * b of the batch, the same lam for both paths
        found = False
        for b in range(4):
            diff = inputs[row] - inputs[b]
            if diff.abs().max() < 1e-6:
                continue
            lam = ((x[row] - inputs[b]) / diff).mean()
            if torch.allclose(lam * inputs[row] + (1 - lam) * inputs[b], x[row], atol=1e-5):
                blend = lam * t_inputs[row] + (1 - lam) * t_inputs[b]
                found = torch.allclose(y[row], teacher_block(blend), atol=1e-5) and 0 <= lam <= 1
                if found:
                    break
        assert found
    assert _batch(inputs, targets, idx, None, torch.Generator())[0].equal(inputs[:4])


def test_reconstruction_with_feature_mix_runs_only_on_the_later_blocks_and_lowers_the_error():
    teacher, student, images = _setup()
    calls = []
    late = teacher.blocks[1]
    handle = late.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    config = ReconstructConfig(iterations=60, batch_size=16, feature_mix=0.5, feature_mix_after=0.5)
    try:
        records = reconstruct(student, teacher, images, config)
    finally:
        handle.remove()
    assert calls.count(8) == 60  # the teacher's late block ran on 8 blended inputs per step
    assert [r["block"] for r in records[2:]] == ["blocks.1", "head.2"]
    assert all(r["mse_after"] < 0.95 * r["mse_before"] for r in records[2:])  # the blended blocks still learn
    early_calls = []
    h = teacher.blocks[0].register_forward_hook(lambda m, i, o: early_calls.append(len(i[0])))
    try:
        reconstruct(copy.deepcopy(student), teacher, images, config)
    finally:
        h.remove()
    assert 8 not in early_calls  # blocks.0 is block 1 of 4: before the second half, no blending


def test_feature_mix_must_be_a_share():
    with pytest.raises(ValueError, match="feature_mix and feature_mix_after must be in"):
        ReconstructConfig(feature_mix=1.5)


def _rounding_with_offsets(h):
    """An AdaRoundWeight on a 3x4 linear layer whose soft offsets are `h` (3x4)."""
    from dfq.quant.adaround import GAMMA, ZETA, AdaRoundWeight

    layer = quantize_model(nn.Sequential(nn.Linear(4, 3)), QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))[0]
    rounding = AdaRoundWeight(layer)
    p = (h - GAMMA) / (ZETA - GAMMA)  # sigmoid(alpha) that gives h
    with torch.no_grad():
        rounding.alpha.copy_(torch.log(p / (1 - p)))
    return rounding


def test_rounding_regularizer_is_zero_on_decided_offsets_and_known_in_between():
    decided = _rounding_with_offsets(torch.full((3, 4), 0.5))
    with torch.no_grad():  # far beyond the stretched sigmoid's ends: offsets clipped to exactly 0 or 1
        decided.alpha.copy_(torch.tensor([[20.0, -20.0, 20.0, -20.0]] * 3))
    assert set(decided.soft_offset().flatten().tolist()) == {0.0, 1.0}
    assert decided.regularizer(2.0).item() == 0.0 and decided.regularizer(20.0).item() == 0.0

    half = _rounding_with_offsets(torch.full((3, 4), 0.5))
    assert half.regularizer(2.0).item() == pytest.approx(12.0, rel=1e-5)  # each term 1 - 0^beta

    quarter = _rounding_with_offsets(torch.tensor([[0.25, 0.75, 0.25, 0.75]] * 3))
    torch.testing.assert_close(quarter.soft_offset(), torch.tensor([[0.25, 0.75, 0.25, 0.75]] * 3))
    # |2h - 1| = 0.5 on both sides of 0.5
    assert quarter.regularizer(2.0).item() == pytest.approx(12 * (1 - 0.5**2), rel=1e-5)
    assert quarter.regularizer(3.0).item() == pytest.approx(12 * (1 - 0.5**3), rel=1e-5)


def test_regularizer_exponent_anneals_on_a_cosine_after_the_warmup():
    from dfq.quant.reconstruct import _beta

    for config in (ReconstructConfig(), ReconstructConfig(warmup=0.5, beta_start=10.0, beta_end=4.0)):
        start, end, w = config.beta_start, config.beta_end, config.warmup
        assert _beta(w, config) == pytest.approx(start)
        assert _beta(1.0, config) == pytest.approx(end)
        assert _beta(w + 0.5 * (1 - w), config) == pytest.approx((start + end) / 2)
        # a quarter of the way: cosine, not linear (which would give start - (start - end) / 4)
        quarter = end + (start - end) * 0.5 * (1 + 2**-0.5)
        assert _beta(w + 0.25 * (1 - w), config) == pytest.approx(quarter)


def test_reconstruction_leaves_the_student_in_the_default_memory_layout():
    # blocks run channels-last while reconstructing; left that way, the student would compute (by a rounding)
    # differently from the same weights saved and loaded again
    teacher, student, images = _setup()
    reconstruct(student, teacher, images, ReconstructConfig(iterations=2))
    assert all(p.is_contiguous() for p in student.parameters())
    reloaded = copy.deepcopy(teacher)
    reloaded = quantize_model(reloaded, QuantConfig(w_bits=3, a_bits=3, protocol="paper"))
    reloaded.load_state_dict(student.state_dict())
    x = torch.cat(images)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), reloaded.eval()(x))


def held_bytes_per_collection(monkeypatch):
    """Wrap the reconstruction's data making: per collection, the bytes of block data still alive from earlier
    collections plus the new data's (weak references, so that what has been let go is not counted)."""
    import weakref

    from dfq.quant import reconstruct as module

    alive, peaks = [], []
    original = module._reconstruct_block

    def tracked(block, collect, rounds, config):
        def measured(part):
            before = sum(t.numel() * t.element_size() for t in (r() for r in alive) if t is not None)
            data = collect(part)
            tensors = [t for t in data[:2]] + ([data[2].teacher_inputs] if data[2] is not None else [])
            alive.extend(weakref.ref(t) for t in tensors)
            peaks.append(before + sum(t.numel() * t.element_size() for t in tensors))
            return data
        return original(block, measured, rounds, config)

    monkeypatch.setattr(module, "_reconstruct_block", tracked)
    return peaks


def test_a_memory_budget_makes_pools_and_holds_one_at_a_time(monkeypatch):
    teacher, student, images = _setup()
    peaks = held_bytes_per_collection(monkeypatch)
    per_image = (8 * 8 * 8 * 4) * 2  # a block's 8x8x8 input and output in float32
    budget_mb = 40 * per_image / 2**20  # 40 of the 128 images
    records = reconstruct(student, teacher, images, ReconstructConfig(iterations=8, batch_size=8,
                                                                      memory_mb=budget_mb))
    pooled = [r for r in records if r["pool"] < 128]
    # the stem holds 3+8 channels an image (58 fit), the blocks 8+8 (40 fit), the classifier all 128
    assert [(r["block"], r["pool"]) for r in pooled] == [("stem", 58), ("blocks.0", 40), ("blocks.1", 40)]
    assert max(peaks) <= budget_mb * 2**20  # never two pools at once
    assert all(math.isfinite(r["mse_before"]) and math.isfinite(r["mse_after"]) for r in records)


class _WithAux(nn.Module):  # an auxiliary head that only training runs, as GoogLeNet's
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.aux = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.body(x)
        if self.training:
            x = self.aux(x)
        return self.fc(x.mean((2, 3)))


def test_a_block_the_eval_forward_never_runs_is_skipped():
    teacher = randomize_bn(_WithAux()).eval()
    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    images = [torch.randn(8, 3, 8, 8)]
    calibrate(student, lambda m: (m(images[0]), m.aux(m.body(images[0]))))  # the aux head's ranges by hand
    records = reconstruct(student, teacher, images, ReconstructConfig(iterations=2, batch_size=4, last_block=True))
    assert [r["block"] for r in records] == ["body.0", "aux.0", "fc"]
    assert "skipped" in records[1] and "skipped" not in records[0] and "mse_after" in records[2]
