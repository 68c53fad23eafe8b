"""gznq's data side: the conditional generator, its BatchNorm-statistics training, and the synthetic stream."""

from generators.bn_stats import BNStatsRecorder, bn_kl_loss, bn_l2_loss
from generators.network import ConditionalGenerator, GeneratorConfig, normalize

__all__ = ["BNStatsRecorder", "ConditionalGenerator", "GeneratorConfig", "bn_kl_loss", "bn_l2_loss", "normalize"]
