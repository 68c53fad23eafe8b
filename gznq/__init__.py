"""gznq: data-free quantization of image classifiers. This package sits above `dfq` (the student side) and
`generators` (the data side) and joins them: the pipeline verb, the data sources, distillation with a
generator in the loop, and the command line.

    from gznq import PipelineConfig, run_pipeline
"""

from gznq.pipeline import METHODS, PipelineConfig, PipelineResult, run_pipeline

__all__ = ["METHODS", "PipelineConfig", "PipelineResult", "run_pipeline"]
