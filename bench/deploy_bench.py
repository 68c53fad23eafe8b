"""The deployment benchmark: latency and file size of one model four ways, side by side in one run.

For each model:

  fp32         the float model (BN folded) as ONNX, run by onnxruntime
  gznq-int8    our W8A8 `deploy` student, exported with `train.py export`'s writer (dfq.export)
  ort-int8     onnxruntime's own `quantize_static` of the fp32 file (QDQ, per-channel signed weights,
               unsigned activations, after its `quant_pre_process`): the anchor to beat
  gznq-w4a4    our W4A4 `deploy` student, 4-bit values on the 8-bit grid (same kernels as int8)
  gznq-w4a4-int4  the same student with its 4-bit weights packed as int4 (`--pack-int4`): the smallest file,
               but onnxruntime runs those convolutions in float
  fake-quant   the PyTorch fake-quantized W8A8 student that gznq's pipeline makes (not a deployment format)

Latency: the median of 2 x --repeats timed runs, at batch 1 and --batch, with --threads
threads (default: all cores), onnxruntime at its full graph optimization: each variant in turn gets a fresh
session (no other session's threads alive), 3 untimed runs and --repeats timed ones, in two passes, the second
in reverse order, so that drift of the machine's speed falls on all variants alike. The students are calibrated on 256
real training images for `cifar10_resnet20` (published weights), and on 32 random images for models at 224
(random weights: speed and size do not depend on them). Each int8 file's integer kernels are counted in
onnxruntime's optimized graph. Rows go to OUT/results.json and OUT/results.md.

    python -m bench.deploy_bench --out runs/deploy_bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ASSETS, machine, markdown_table
from dfq.export import export_onnx
from dfq.export.check import integer_kernels, session
from dfq.io import write_json_atomic
from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, fold_batchnorm, quantize_model

MODELS = ("cifar10_resnet20", "tv:resnet18", "tv:mobilenet_v2")


def _calibration(name: str, spec, count: int):
    if name.startswith("cifar10_"):
        from dfq.data import real_calibration_loader

        return [x for x, _ in real_calibration_loader(ASSETS / "cifar10-jpeg" / "train", spec, num_images=count,
                                                      batch_size=64)]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(8, spec.channels, spec.image_size, spec.image_size, generator=gen) for _ in range(4)]


def _timed(make_runner, x, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds of `repeats` runs on `x` of a runner made just before (and dropped after), after `warmup`
    untimed runs: no other session's threads are alive while it is timed."""
    run = make_runner()
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    del run
    return times


def _median_ms(makers: dict, x, repeats: int) -> dict[str, tuple[float, float, float]]:
    """(median, median of the first pass, median of the second) milliseconds of each runner over two passes,
    the second in reverse order, so that drift of the machine's speed falls on all of them alike."""
    passes: dict[str, list[list[float]]] = {name: [] for name in makers}
    for order in (list(makers), list(reversed(makers))):
        for name in order:
            passes[name].append(_timed(makers[name], x, repeats))
    return {name: tuple(1000 * statistics.median(t) for t in (p[0] + p[1], p[0], p[1])) for name, p in passes.items()}


def _ort_runner(path: Path, threads: int):
    sess = session(path, threads=threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _ort_static(fp32: Path, out: Path, batches: list[torch.Tensor]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": b.numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    prepared = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()


def bench_model(name: str, *, threads: int, batch: int, repeats: int, work: Path) -> list[dict]:
    pretrained = name.startswith("cifar10_")
    teacher, spec = create_teacher(name, pretrained=pretrained)
    teacher.eval()
    batches = _calibration(name, spec, 256)
    files = {"fp32": work / f"{name.replace(':', '_')}_fp32.onnx",
             "gznq-int8": work / f"{name.replace(':', '_')}_gznq.onnx",
             "ort-int8": work / f"{name.replace(':', '_')}_ort.onnx",
             "gznq-w4a4": work / f"{name.replace(':', '_')}_w4.onnx",
             "gznq-w4a4-int4": work / f"{name.replace(':', '_')}_w4_int4.onnx"}
    folded = copy.deepcopy(teacher)
    fold_batchnorm(folded)
    export_onnx(folded, spec, files["fp32"], overwrite=True)
    student = quantize_model(teacher, QuantConfig(w_bits=8, a_bits=8, protocol="deploy"))
    calibrate(student, batches)
    student.eval()
    export_onnx(student, spec, files["gznq-int8"], overwrite=True)
    _ort_static(files["fp32"], files["ort-int8"], batches[:4])
    w4 = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))
    calibrate(w4, batches)
    export_onnx(w4.eval(), spec, files["gznq-w4a4"], overwrite=True)
    export_onnx(w4, spec, files["gznq-w4a4-int4"], overwrite=True, pack_int4=True)

    torch.set_num_threads(threads)
    shape = (spec.channels, spec.image_size, spec.image_size)
    inputs = {b: np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32) for b in (1, batch)}
    makers = {variant: (lambda path=path: _ort_runner(path, threads)) for variant, path in files.items()}
    makers["fake-quant"] = lambda: (lambda x: student(torch.from_numpy(x)))
    rows = []
    for variant in makers:
        row = {"model": name, "variant": variant, "weights": "published" if pretrained else "random"}
        if variant in files:
            row["size_mb"] = files[variant].stat().st_size / 1e6
        if variant not in ("fp32", "fake-quant"):
            report = integer_kernels(files[variant])
            row["integer_kernels"] = report.integer_layers
            row["float_layers"] = len(report.float_layers)
            row["integer_ops"] = sum(report.integer_ops.values())
        rows.append(row)
    with torch.no_grad():
        for b, x in inputs.items():
            times = _median_ms(makers, x, repeats)
            for row in rows:
                row[f"ms_b{b}"], row[f"ms_b{b}_pass1"], row[f"ms_b{b}_pass2"] = times[row["variant"]]
    fp32 = rows[0]
    for row in rows:
        for b in (1, batch):
            row[f"x_fp32_b{b}"] = row[f"ms_b{b}"] / fp32[f"ms_b{b}"]
        if "size_mb" in row:
            row["x_fp32_size"] = row["size_mb"] / fp32["size_mb"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every runtime")
    parser.add_argument("--batch", type=int, default=64, help="the larger batch timed (besides 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per pass (median of two passes' runs)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows += bench_model(name, threads=args.threads, batch=args.batch, repeats=args.repeats, work=Path(tmp))
            print(markdown_table([r for r in rows if r["model"] == name], _columns(args.batch)), flush=True)
    import onnxruntime

    payload = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "started": started,
               "threads": args.threads, "batch": args.batch, "repeats": args.repeats,
               "command": "python -m bench.deploy_bench " + " ".join(argv if argv is not None else os.sys.argv[1:]),
               "rows": rows}
    write_json_atomic(out / "results.json", payload)
    (out / "results.md").write_text(f"{payload['machine']}, {args.threads} threads, median of 2 x {args.repeats} runs\n\n"
                                    + markdown_table(rows, _columns(args.batch)) + "\n")
    print(json.dumps({"written": str(out / "results.json")}))
    return 0


def _columns(batch: int) -> list[tuple[str, str]]:
    return [("model", "model"), ("variant", "variant"), ("weights", "weights"), ("ms_b1", "ms batch 1"),
            ("x_fp32_b1", "x fp32"), (f"ms_b{batch}", f"ms batch {batch}"), (f"x_fp32_b{batch}", "x fp32"),
            ("size_mb", "MB"), ("x_fp32_size", "x fp32"), ("integer_kernels", "integer conv/linear"),
            ("float_layers", "float conv/linear"), ("integer_ops", "integer add/pool")]


if __name__ == "__main__":
    raise SystemExit(main())
