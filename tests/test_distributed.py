"""Two processes (gloo, on the CPU) against one: the global-batch BN loss, calibration ranges and evaluation
counts must equal the single-process ones on the same images."""

import contextlib
import dataclasses
import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dfq import distributed
from dfq.data import build_eval_loader
from dfq.evaluate import evaluate
from dfq.quant import QuantConfig, calibrate, quantize_model
from dfq.quant.calibrate import quantizers
from generators.bn_stats import BNStatsRecorder, bn_kl_loss, distributed_sum_reducer
from generators.network import normalize
from tests.generators.helpers import TINY_SPEC, tiny_teacher

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process_group(rank, port):
    """This process as `rank` of a gloo group of WORLD processes on this machine, on one thread; the group is
    destroyed on the way out."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        yield
    finally:
        dist.destroy_process_group()


def _images(n=16, seed=1):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _bn_loss(images, reducer=None):
    teacher = tiny_teacher()
    x = images.clone().requires_grad_(True)
    with BNStatsRecorder(teacher, reduce_sums=reducer) as rec:
        teacher(normalize(x, TINY_SPEC.mean, TINY_SPEC.std))
    loss = bn_kl_loss(rec.stats)
    loss.backward()
    return loss.detach(), x.grad


def _ranges(model):
    return {name: tuple(t.clone() for t in q.range()) for name, q in quantizers(model) if "input" in name}


def _calibrated(observer, batches):
    model = quantize_model(tiny_teacher(), QuantConfig(w_bits=4, a_bits=4, protocol="paper", act_observer=observer))
    calibrate(model, batches)
    return _ranges(model)


def _eval_model(seed: int = 0):
    from dfq.models import CifarResNet

    torch.manual_seed(seed)  # the same weights in every process
    return CifarResNet(20).eval()


def _worker(rank, port, out_dir, data_dir):
    with _process_group(rank, port):
        images = _images()
        share = images[rank::WORLD]  # this process's half of the global batch
        loss, grad = _bn_loss(share, distributed_sum_reducer())
        result = {"loss": loss, "grad": grad, "world": distributed.world_size()}
        batches = [x[rank::WORLD] for x in images.split(8)]
        result["ranges"] = {obs: _calibrated(obs, batches) for obs in ("minmax", "mse", "percentile")}
        from dfq.quant.observers import PercentileObserver, QuantSpec

        small = PercentileObserver(QuantSpec(8), max_samples=50)
        small.collect(rank * 1000 + torch.arange(120.0 if rank == 0 else 360.0))  # one process saw 3x more
        small.sync()
        result["merged"] = (small.samples().clone(), small._seen)
        if data_dir:
            spec = TINY_SPEC.__class__(**{**TINY_SPEC.__dict__, "image_size": 32, "num_classes": 10})
            model = _eval_model()
            loader = build_eval_loader(data_dir, spec, batch_size=16, limit=40, num_workers=0)
            result["shard"] = len(loader.dataset)
            result["eval"] = evaluate(model, loader, teacher=_eval_model(1), progress=False).to_dict()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


GEN_CONFIG = dict(num_classes=4, image_size=8, base_size=4, width=16, latent_dim=8, embed_dim=8)


def _train_tiny_generator(out, steps=2, resume=False):
    from generators import GeneratorConfig, GeneratorTrainConfig, train_generator

    config = GeneratorTrainConfig(steps=steps, batch_size=8, info_weight=1.0, info_size=4, log_every=1)
    return train_generator(tiny_teacher(), TINY_SPEC, out, teacher_name="tiny", gen_config=GeneratorConfig(**GEN_CONFIG),
                           config=config, progress=False, resume=resume, steps=steps if resume else None)


def _generator_worker(rank, port, out_dir):
    with _process_group(rank, port):
        generator = _train_tiny_generator(os.path.join(out_dir, "gen"))
        torch.save(generator.state_dict(), os.path.join(out_dir, f"gen_rank{rank}.pt"))
        # a run started by one process, continued by two
        generator = _train_tiny_generator(os.path.join(out_dir, "started_alone"), steps=2, resume=True)
        torch.save(generator.state_dict(), os.path.join(out_dir, f"resumed_rank{rank}.pt"))


def test_distributed_generator_steps_leave_the_single_process_weights(tmp_path):
    _train_tiny_generator(tmp_path / "started_alone", steps=1)
    mp.spawn(_generator_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single = _train_tiny_generator(tmp_path / "single").state_dict()
    saved = (tmp_path / "gen" / "generator.safetensors", tmp_path / "gen" / "losses.csv")
    assert all(p.is_file() for p in saved)  # written once, by the main process
    from generators.checkpoint import load_generator

    on_disk = load_generator(tmp_path / "gen")[0].state_dict()
    for rank in range(WORLD):
        weights = torch.load(tmp_path / f"gen_rank{rank}.pt", weights_only=True)
        for key, value in single.items():
            assert torch.allclose(weights[key].float(), value.float(), atol=1e-5), (rank, key)
            assert torch.allclose(on_disk[key].float(), value.float(), atol=1e-5), key
    for rank in range(WORLD):  # resumed on another process count: the same run
        weights = torch.load(tmp_path / f"resumed_rank{rank}.pt", weights_only=True)
        assert all(torch.allclose(weights[k].float(), v.float(), atol=1e-5) for k, v in single.items())
    # the logged losses are the global batch's
    rows = [line.split(",") for line in (tmp_path / "gen" / "losses.csv").read_text().splitlines()]
    single_rows = [line.split(",") for line in (tmp_path / "single" / "losses.csv").read_text().splitlines()]
    head = rows[0]
    for name in ("loss", "bn", "class_bn", "ce"):
        i = head.index(name)
        assert abs(float(rows[-1][i]) - float(single_rows[-1][i])) < 1e-4, name


def _pipeline_config(out):
    from dfq.quant.reconstruct import ReconstructConfig
    from generators.refine import RefineConfig
    from gznq import PipelineConfig

    return PipelineConfig(model="tiny", source="noise", methods=("reconstruct",), calib_images=16, batch_size=8,
                          refine=RefineConfig(steps=1), recon=ReconstructConfig(iterations=5, batch_size=4),
                          quant=QuantConfig(w_bits=4, a_bits=4, protocol="paper", act_observer="minmax"),
                          out=out, progress=False, workers=0, device="cpu")


def _pipeline_worker(rank, port, out_dir):
    from dfq.models import Teacher
    from gznq import run_pipeline

    with _process_group(rank, port):
        result = run_pipeline(_pipeline_config(os.path.join(out_dir, "student")),
                              teacher=Teacher(tiny_teacher(), TINY_SPEC))
        torch.save({"state": result.student.state_dict(), "report": result.report},
                   os.path.join(out_dir, f"pipeline_rank{rank}.pt"))


def test_the_pipeline_on_two_processes_keeps_one_student(tmp_path):
    mp.spawn(_pipeline_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    runs = [torch.load(tmp_path / f"pipeline_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for key, value in runs[0]["state"].items():  # averaged gradients keep the processes' students the same
        assert torch.allclose(runs[1]["state"][key].float(), value.float(), atol=1e-6, equal_nan=True), key
    assert runs[0]["report"]["processes"] == WORLD and (tmp_path / "student" / "student.json").is_file()
    from dfq.quant import load_student

    saved, _ = load_student(tmp_path / "student", model=tiny_teacher())
    for key, value in saved.state_dict().items():  # written once, the student every process holds
        assert torch.allclose(value.float(), runs[0]["state"][key].float(), atol=1e-6, equal_nan=True), key
    records = runs[0]["report"]["reconstruct"]
    assert records and all(math.isfinite(r["mse_after"]) for r in records)
    assert runs[0]["report"]["calib_images"] == 16 and runs[1]["report"]["processes"] == WORLD


DISTILL_RUNS = {  # every term that needs the global batch: blends across it, CE on its unblended images (uneven
    # between the processes at mix_fraction 0.25), the bounded adversarial term, tracked activation ranges, and a
    # student BatchNorm in training (GDFQ's)
    "ours": dict(mix_fraction=0.25, ce_weight=0.5, feature_weight=0.1, adversarial_bound=0.05, act_ema_steps=2),
    "bounded": dict(adversarial_weight=1000.0, adversarial_bound=1e-9),  # the bound holds: no adversarial gradient
    "every_second": dict(generator_every=2),  # the generator updated every other step, drawn without update between
    "gdfq": "gdfq",
    "batches": dict(generator_every=0, mix_fraction=0.5, ce_weight=1.0),
}


def _distill(run, steps=3, taken=None):
    """`taken` (default all) of `steps` distillation steps of a tiny student (global batch 16); returns the
    student's and generator's weights and the losses of every step."""
    from torch.utils.data import DataLoader, TensorDataset

    from generators.network import ConditionalGenerator, GeneratorConfig
    from gznq.distill import DistillConfig, Distiller, gdfq_recipe
    from gznq.distill_stage import LocalRowsSampler

    torch.manual_seed(0)
    teacher = tiny_teacher()
    with torch.no_grad():  # confident logits, so that student and teacher disagree measurably
        teacher[-1].weight.mul_(30)
    generator = ConditionalGenerator(GeneratorConfig(**GEN_CONFIG))
    options = DISTILL_RUNS[run]
    config = (dataclasses.replace(gdfq_recipe(steps, batch_size=16), warmup_steps=1) if options == "gdfq"
              else DistillConfig(**{**dict(steps=steps, batch_size=16, lr=1e-3, scale_lr=1e-3), **options}))
    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="paper", act_observer="minmax",
                                                  fold_bn=options != "gdfq"))
    calibrate(student, [normalize(_images(16, seed=3), TINY_SPEC.mean, TINY_SPEC.std)])
    if run == "batches":
        data = TensorDataset(normalize(_images(48, seed=4), TINY_SPEC.mean, TINY_SPEC.std), torch.arange(48) % 4)
        shuffle = torch.Generator().manual_seed(5)
        loader = DataLoader(data, batch_sampler=LocalRowsSampler(data, 16, shuffle), generator=shuffle)
        distiller = Distiller(student, teacher, TINY_SPEC, config, batches=loader)
    else:
        distiller = Distiller(student, teacher, TINY_SPEC, config, generator=generator)
    losses = [distiller.step() for _ in range(steps if taken is None else taken)]
    return {"student": student.state_dict(), "generator": generator.state_dict(), "losses": losses}


def _bounded_gradients(values, bound):
    """The gradient of bounded_mean for this process's value (values: one per process)."""
    from gznq.distill import bounded_mean

    value = torch.tensor(values[distributed.rank()], requires_grad=True)
    (bounded_mean(value, bound) + 0 * value).backward()  # above the bound it holds no graph of its own
    return value.grad.item()


def _distill_worker(rank, port, out_dir):
    with _process_group(rank, port):
        result = {run: _distill(run) for run in DISTILL_RUNS}
        # the bound applies to the mean over processes: 0.5 and 1.2 are below 1 together, 0.5 and 2.0 are not
        result["bounded_mean"] = [_bounded_gradients(values, 1.0) for values in ((0.5, 1.2), (0.5, 2.0))]
        from torch.utils.data import DataLoader, TensorDataset

        from gznq.distill import DistillConfig, Distiller

        whole_batches = DataLoader(TensorDataset(_images(32), torch.arange(32) % 4), batch_size=16)
        student = quantize_model(tiny_teacher(), QuantConfig(w_bits=4, a_bits=4, act_observer="minmax"))
        calibrate(student, [_images(16)])
        try:  # each process handed whole batches, not its share of them (only their size can be checked)
            Distiller(student, tiny_teacher(), TINY_SPEC, DistillConfig(steps=1, batch_size=16, generator_every=0),
                      batches=whole_batches).step()
            result["whole_batches"] = "accepted"
        except ValueError as exc:
            result["whole_batches"] = str(exc)
        torch.save(result, os.path.join(out_dir, f"distill_rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_process_distillation(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    mp.spawn(_distill_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"distill_rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("run", list(DISTILL_RUNS))
def test_distillation_steps_on_two_processes_leave_the_single_process_student(two_process_distillation, run):
    torch.set_num_threads(1)
    single = _distill(run)
    for result in two_process_distillation:
        for part in ("student", "generator"):
            for key, value in single[part].items():
                assert torch.allclose(result[run][part][key].float(), value.float(), atol=1e-5, equal_nan=True), (
                    part, key)
        assert len(result[run]["losses"]) == len(single["losses"])
        for got, expected in zip(result[run]["losses"], single["losses"]):  # the global batch's losses
            assert got.keys() == expected.keys()
            assert all(abs(got[k] - expected[k]) < 1e-4 * max(1.0, abs(expected[k])) for k in got), (got, expected)
    changed = [k for k, v in single["student"].items() if v.is_floating_point()
               and not torch.equal(v, _distill(run, taken=0)["student"][k])]
    assert changed  # the steps moved the student: equal weights are not equal untouched weights


def _distill_pipeline_config(out, generator_dir, *, resume=False):
    from generators.refine import RefineConfig
    from gznq import PipelineConfig
    from gznq.distill import DistillConfig

    return PipelineConfig(model="tiny", source=f"generator:{generator_dir}", methods=("distill",), calib_images=16,
                          batch_size=8, refine=RefineConfig(steps=0), save_every=2, resume=resume,
                          distill=DistillConfig(steps=4, batch_size=8, lr=1e-3, scale_lr=1e-3, ce_weight=0.5),
                          quant=QuantConfig(w_bits=4, a_bits=4, protocol="paper", act_observer="minmax"),
                          out=out, progress=False, workers=0, device="cpu")


def _distill_pipeline_worker(rank, port, out_dir):
    from dfq.models import Teacher
    from gznq import run_pipeline

    with _process_group(rank, port):
        generator = os.path.join(out_dir, "gen")
        for name, resume in (("resumed", True), ("fresh", False)):
            result = run_pipeline(_distill_pipeline_config(os.path.join(out_dir, name), generator, resume=resume),
                                  teacher=Teacher(tiny_teacher(), TINY_SPEC))
            torch.save(result.student.state_dict(), os.path.join(out_dir, f"{name}_rank{rank}.pt"))


def test_distillation_in_the_pipeline_on_two_processes_and_resumed_there(tmp_path, ctrl_c_at_distill_step):
    """Started by one process and interrupted, continued by two; and run by two from the start: both end with
    the student one uninterrupted process makes."""
    from dfq.models import Teacher
    from dfq.quant import load_student
    from gznq import run_pipeline

    torch.set_num_threads(1)
    _train_tiny_generator(tmp_path / "gen")
    whole = run_pipeline(_distill_pipeline_config(tmp_path / "whole", tmp_path / "gen"),
                         teacher=Teacher(tiny_teacher(), TINY_SPEC)).student.state_dict()
    with ctrl_c_at_distill_step(3), pytest.raises(KeyboardInterrupt):
        run_pipeline(_distill_pipeline_config(tmp_path / "resumed", tmp_path / "gen"),
                     teacher=Teacher(tiny_teacher(), TINY_SPEC))
    assert (tmp_path / "resumed.partial" / "distill_state.pt").is_file()
    mp.spawn(_distill_pipeline_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for name in ("resumed", "fresh"):
        saved, _ = load_student(tmp_path / name, model=tiny_teacher())
        for state in [saved.state_dict()] + [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in range(WORLD)]:
            for key, value in whole.items():  # Adam's steps are lr = 1e-3: a lost reduction moves weights that much
                assert torch.allclose(state[key].float(), value.float(), atol=2e-4, equal_nan=True), (name, key)
    report = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert report["distill_steps"] == 4 and report["processes"] == WORLD


def test_the_adversarial_bound_applies_to_the_mean_over_processes(two_process_distillation):
    for result in two_process_distillation:  # both below (mean 0.85): every share's gradient; mean 1.25: none
        assert result["bounded_mean"] == [1.0, 0.0]


def test_batches_of_another_size_than_this_process_share_are_refused(two_process_distillation):
    for result in two_process_distillation:
        assert "share of a global batch of 16 (8 images" in result["whole_batches"]


def test_distillation_needs_a_batch_that_splits(monkeypatch):
    from gznq import run_pipeline
    from gznq.distill import DistillConfig

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    config = dataclasses.replace(_pipeline_config(None), methods=("reconstruct", "distill"), source="real:/nowhere",
                                 distill=DistillConfig(batch_size=18))
    with pytest.raises(ValueError, match="divisible by 4"):
        run_pipeline(config)
    config = dataclasses.replace(_pipeline_config(None), calib_images=15)
    with pytest.raises(ValueError, match="equal shares"):
        run_pipeline(config)


def test_a_pixel_set_smaller_than_the_distillation_batch_is_refused_before_any_work(monkeypatch, tmp_path):
    from generators.pixel_opt import PIXELS_META
    from gznq import run_pipeline

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    (tmp_path / PIXELS_META).write_text(json.dumps({"num_images": 10}))
    config = dataclasses.replace(_pipeline_config(None), methods=("reconstruct", "distill"), source=f"pixels:{tmp_path}")
    with pytest.raises(ValueError, match="holds 10 images, fewer than a distillation batch of 128: .* at most 10 divisible by 4"):
        run_pipeline(config)


def test_a_batch_that_does_not_split_is_refused():
    from generators.parallel import local_rows

    assert local_rows(8, 1, 2).tolist() == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="divisible by 4"):
        local_rows(10, 0, 2)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cifar_test_dir):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out), str(cifar_test_dir)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_the_distributed_bn_loss_is_the_global_batch_loss(two_processes):
    images = _images()
    single_loss, single_grad = _bn_loss(images)
    for rank, result in enumerate(two_processes):
        assert result["world"] == WORLD
        assert torch.allclose(result["loss"], single_loss, rtol=0, atol=1e-5)
        # each process's images get WORLD times their share of the global loss's gradient: the all-reduce's
        # backward sums the same upstream gradient from every process, and data-parallel averaging divides
        # the parameter gradients by WORLD again
        assert torch.allclose(result["grad"], WORLD * single_grad[rank::WORLD], atol=1e-6)


@pytest.mark.parametrize("observer, exact", [("minmax", True), ("mse", False), ("percentile", False)])
def test_calibration_ranges_equal_one_process_on_all_images(two_processes, observer, exact):
    single = _calibrated(observer, _images().split(8))
    for result in two_processes:
        ranges = result["ranges"][observer]
        assert ranges.keys() == single.keys()
        for name, (lo, hi) in single.items():
            if exact:
                assert torch.equal(ranges[name][0], lo) and torch.equal(ranges[name][1], hi), name
            else:  # the same values in another order: float sums differ in the last bits
                assert torch.allclose(ranges[name][0], lo, atol=1e-5) and torch.allclose(ranges[name][1], hi, atol=1e-5)


def test_sampled_observers_merge_into_one_uniform_sample(two_processes):
    (a, seen_a), (b, seen_b) = (r["merged"] for r in two_processes)
    assert torch.equal(a, b) and a.shape == (1, 50) and seen_a == seen_b == 480
    values = a[0]
    from_first = int((values < 1000).sum())
    assert 5 <= from_first <= 22  # a quarter of the values seen (12.5 expected), not half
    # every value one of those seen (a process's own sample draws a large batch with replacement: repeats allowed)
    assert ((values < 120) | ((values >= 1000) & (values < 1360))).all()


def test_evaluation_of_shards_equals_one_process(two_processes, cifar_test_dir):
    spec = TINY_SPEC.__class__(**{**TINY_SPEC.__dict__, "image_size": 32, "num_classes": 10})
    model = _eval_model()
    single = evaluate(model, build_eval_loader(cifar_test_dir, spec, batch_size=16, limit=40, num_workers=0),
                      teacher=_eval_model(1), progress=False).to_dict()  # another model: the figures are not 0
    assert [r["shard"] for r in two_processes] == [20, 20]
    assert single["output_kl"] > 0 and single["agreement"] < 100
    counted = ("top1", "top5", "teacher_top1", "agreement", "broken", "fixed")
    for result in two_processes:
        got = result["eval"]
        assert got["num_images"] == 40
        assert {k: got[k] for k in counted} == {k: single[k] for k in counted}
        assert got["output_kl"] == pytest.approx(single["output_kl"], rel=1e-5)


def test_one_process_is_the_identity():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0
    t = torch.arange(5.0)
    assert torch.equal(distributed.all_reduce(t, "max"), t) and distributed.all_gather_cat(t) is t
    assert distributed.shard_indices([3, 4, 5]) == [3, 4, 5]
    with pytest.raises(ValueError, match="unknown reduction"):
        distributed.all_reduce(t, "mean")
