"""gznq's data side: the conditional generator, its BatchNorm-statistics training, and the synthetic stream."""

from generators.bn_stats import BNStatsRecorder, bn_kl_loss, bn_l2_loss
from generators.network import ConditionalGenerator, GeneratorConfig, normalize
from generators.trainer import GeneratorTrainConfig, train_generator

__all__ = ["BNStatsRecorder", "ConditionalGenerator", "GeneratorConfig", "GeneratorTrainConfig", "bn_kl_loss",
           "bn_l2_loss", "normalize", "train_generator"]
