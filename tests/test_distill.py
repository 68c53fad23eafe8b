import copy

import torch

from dfq.losses import kd_loss
from gznq.distill import Distiller, DistillConfig, gdfq_recipe
from dfq.quant import QuantConfig, calibrate, quantize_model
from generators.network import ConditionalGenerator, GeneratorConfig, normalize
from tests.generators.helpers import TINY_SPEC, tiny_teacher

GEN = GeneratorConfig(num_classes=4, image_size=8, base_size=4, width=16, latent_dim=8, embed_dim=8)


def _setup(seed=0, bits=3):
    torch.manual_seed(seed)
    teacher = tiny_teacher()
    # no global pooling: logits vary strongly with the image, so disagreements are well above noise
    teacher = torch.nn.Sequential(*list(teacher)[:6], torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()
    with torch.no_grad():
        teacher[-1].weight.mul_(5)
    generator = ConditionalGenerator(GEN)
    student = quantize_model(teacher, QuantConfig(w_bits=bits, a_bits=bits, protocol="paper"))
    with torch.no_grad():
        z, y = torch.randn(64, 8), torch.arange(64) % 4
        calibrate(student, [normalize(generator.eval()(z, y), TINY_SPEC.mean, TINY_SPEC.std)])
    return teacher, student, generator


def _config(**kw):
    return DistillConfig(**{**dict(steps=40, batch_size=32, lr=1e-3, scale_lr=1e-3, seed=0), **kw})


def _kl_on(student, teacher, generator, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = normalize(generator.eval()(torch.randn(128, 8, generator=g), torch.arange(128) % 4, generator=g),
                      TINY_SPEC.mean, TINY_SPEC.std)
        student.eval()
        return kd_loss(student(x), teacher(x), 1.0).item()


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(5, 7)
    assert kd_loss(a, a, 4.0).item() == 0.0
    assert kd_loss(a, a * 2, 1.0).item() > 0


def test_a_few_distillation_steps_lower_the_kl():
    teacher, student, generator = _setup()
    generator_frozen = ConditionalGenerator(GEN)
    generator_frozen.load_state_dict(generator.state_dict())
    before = _kl_on(student, teacher, generator_frozen)
    d = Distiller(student, teacher, TINY_SPEC, _config(generator_every=0), generator=generator)
    for _ in range(40):
        d.step()
    assert _kl_on(student, teacher, generator_frozen) < 0.7 * before


def test_adversarial_step_raises_and_student_step_lowers_disagreement():
    teacher, student, generator = _setup()
    # generator step with only the adversarial term: disagreement on the same latents must rise
    d = Distiller(student, teacher, TINY_SPEC, _config(bn_weight=0.0, gen_ce_weight=0.0, diversity_weight=0.0,
                                                       adversarial_weight=1.0, adversarial_bound=100.0),
                  generator=generator)
    before = _kl_on(student, teacher, generator)
    for _ in range(5):
        d._generator_step()
    after_gen = _kl_on(student, teacher, generator)
    assert after_gen > before
    g = torch.Generator().manual_seed(1)
    x = normalize(generator.eval()(torch.randn(128, 8, generator=g), torch.arange(128) % 4, generator=g),
                  TINY_SPEC.mean, TINY_SPEC.std).detach()
    for _ in range(5):
        d._student_step(x, torch.arange(128) % 4)
    assert _kl_on(student, teacher, generator) < after_gen


def test_resumed_run_continues_with_identical_next_step_losses():
    teacher, student, generator = _setup()
    d = Distiller(student, teacher, TINY_SPEC, _config(), generator=generator)
    for _ in range(3):
        d.step()
    saved = copy.deepcopy(d.state_dict())
    expected = [d.step() for _ in range(2)]

    teacher2, student2, generator2 = _setup()
    d2 = Distiller(student2, teacher2, TINY_SPEC, _config(), generator=generator2)
    d2.load_state_dict(saved)
    resumed = [d2.step() for _ in range(2)]
    assert resumed == expected


def test_distill_on_fixed_batches_and_source_checks():
    teacher, student, _ = _setup()
    data = [(torch.randn(16, 3, 8, 8), torch.randint(4, (16,))) for _ in range(2)]
    d = Distiller(student, teacher, TINY_SPEC, _config(generator_every=0), batches=data)
    parts = [d.step() for _ in range(5)]
    assert all("kl" in p and "g_bn" not in p for p in parts)
    try:
        Distiller(student, teacher, TINY_SPEC, _config())
    except ValueError as exc:
        assert "exactly one data source" in str(exc)
    else:
        raise AssertionError("a distiller without data must be refused")


def test_gdfq_recipe_sets_the_published_hyperparameters():
    c = gdfq_recipe(40_000)
    assert (c.optimizer, c.lr, c.momentum, c.nesterov, c.weight_decay) == ("sgd", 1e-4, 0.9, True, 1e-4)
    assert (c.temperature, c.kl_weight, c.ce_weight) == (20.0, 1.0, 1.0)
    assert (c.generator_lr, c.generator_betas, c.bn_loss, c.bn_weight, c.gen_ce_weight) == (1e-3, (0.5, 0.999), "l2", 0.1, 1.0)
    assert c.adversarial_weight == 0.0 and c.diversity_weight == 0.0 and c.student_bn == "train"
    assert c.mix_fraction == 0.0 and c.max_shift == 0
    assert c.dynamic_weights and c.scale_lr == 0.0
    assert c.warmup_steps == 400 and c.act_ema_steps == 400  # 4 of 400 epochs


def _scales(student, suffix):
    return {n: m.scale.detach().clone() for n, m in student.named_modules() if n.endswith(suffix)}


def test_weight_scales_stay_when_asked_and_learn_otherwise():
    for weight_scales in (False, True):
        teacher, student, _ = _setup()
        w0, a0 = _scales(student, "weight_quantizer"), _scales(student, "input_quantizer")
        data = [(torch.randn(16, 3, 8, 8), torch.randint(4, (16,))) for _ in range(2)]
        d = Distiller(student, teacher, TINY_SPEC, _config(generator_every=0, weight_scales=weight_scales),
                      batches=data)
        for _ in range(5):
            d.step()
        w1, a1 = _scales(student, "weight_quantizer"), _scales(student, "input_quantizer")
        assert w0 and a0
        assert all(not torch.equal(a0[n], a1[n]) for n in a0)  # activation step sizes learn either way
        assert all(torch.equal(w0[n], w1[n]) for n in w0) is (not weight_scales)


def test_cli_keeps_weight_scales_after_reconstruction_unless_told():
    from gznq.cli.quantize_cmd import pipeline_config
    from gznq.cli.train_cli import build_parser

    def parse(*extra):
        return pipeline_config(build_parser().parse_args(["quantize", "--model", "m", "--source", "real:/x",
                                                          "--out", "o", *extra]))

    # None: the pipeline keeps them after a reconstruction (gznq/pipeline.py resolves it) and learns them otherwise
    assert parse().distill.weight_scales is None
    assert parse("--distill-weight-scales").distill.weight_scales is True
    assert parse("--no-distill-weight-scales").distill.weight_scales is False


def _generator_after_one_step(**kw):
    teacher, student, generator = _setup()
    d = Distiller(student, teacher, TINY_SPEC, _config(batch_size=16, **kw), generator=generator)
    parts = d._generator_step()[2]
    return {k: v.detach().clone() for k, v in generator.state_dict().items()}, parts


def test_adversarial_bound_below_the_disagreement_removes_the_adversarial_gradient():
    plain, _ = _generator_after_one_step(adversarial_weight=0.0)
    bounded, parts = _generator_after_one_step(adversarial_weight=1.0, adversarial_bound=1e-9)
    assert parts["g_adv"] > 1e-3  # far above the bound: the clamp holds the term constant
    assert [k for k in plain if not torch.equal(plain[k], bounded[k])] == []
    unbounded, _ = _generator_after_one_step(adversarial_weight=1.0, adversarial_bound=100.0)
    changed = [k for k in plain if k.endswith("weight") and not torch.equal(plain[k], unbounded[k])]
    assert changed  # the same step with the bound out of reach does feel the term


def test_bounded_mean_in_one_process_is_clamp_in_value_and_gradient():
    from gznq.distill import bounded_mean

    for v in (0.5, 1.0, 2.0):  # below, at and above the bound
        ours, theirs = torch.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)
        (bounded_mean(ours, 1.0) + 0 * ours).backward()
        torch.clamp(theirs, max=1.0).backward()
        assert (bounded_mean(ours, 1.0).item(), ours.grad.item()) == (min(v, 1.0), theirs.grad.item())
