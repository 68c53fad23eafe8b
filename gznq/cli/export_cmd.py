"""`train.py export`: a saved `deploy` student as a QDQ ONNX file that onnxruntime runs with integer kernels."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gznq.cli.common import HelpFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a saved student as a QDQ ONNX model (onnxruntime integer kernels)",
                       formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="student directory written by `train.py quantize`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--allow-float", action="store_true",
                   help="keep the file even where onnxruntime runs a convolution or linear in float (by default "
                        "the export is refused, naming those layers)")
    p.add_argument("--pack-int4", action="store_true",
                   help="write weights of 4 bits and fewer as int4 (opset 21): a smaller file, but onnxruntime runs "
                        "those layers in float (needs --allow-float)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    """Export, then check in onnxruntime that every conv/linear runs as an integer kernel."""
    from dfq.export import export_onnx
    from dfq.export.check import integer_kernels
    from dfq.quant import load_student
    from dfq.quant.serialization import student_input_spec

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {args.out}: give a file name ending in .onnx")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    student, meta = load_student(args.checkpoint)
    config = meta["quant_config"]
    if config.get("protocol") == "deploy" and not config.get("quantize_ops"):
        raise ValueError(f"{args.checkpoint} was made before the deploy protocol quantized additions, pooling and "
                         "biases as an integer runtime does, so onnxruntime cannot run it in integers; re-run "
                         "`train.py quantize` with this version to make a student it can export")
    spec = student_input_spec(meta)
    staged = out.with_name(out.name + ".partial")
    export_onnx(student, spec, staged, overwrite=True,
                metadata={"teacher": meta["teacher"], "quant_config": meta["quant_config"],
                          "student": str(args.checkpoint)}, pack_int4=args.pack_int4)
    try:
        report = integer_kernels(staged)
    except Exception:
        staged.unlink(missing_ok=True)
        raise
    print(report.format())
    if report.float_layers and not args.allow_float:
        staged.unlink(missing_ok=True)
        if args.pack_int4:
            why = "onnxruntime does not fuse int4-packed weights; leave out --pack-int4 for integer kernels"
        elif config.get("input_bits") == 0:
            why = "the student leaves the network input in float (input_bits=0); quantize it with input_bits 8"
        else:
            why = "a layer skipped by the student's config stays in float, and so does whatever feeds it"
        raise ValueError(f"onnxruntime runs {len(report.float_layers)} convolution(s)/linear(s) in float: "
                         f"{', '.join(report.float_layers[:6])}; {why}, or pass --allow-float to keep the file anyway")
    os.replace(staged, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return {"out": str(out), **report.to_dict()}
