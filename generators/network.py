"""`ConditionalGenerator`: latent z and class label in, an image in [0, 1] out.

The network maps (z, y) to a per-pixel mean and log-variance (in logit space) at the teacher's input size;
an image is x = sigmoid(mu + sigma * eps) with eps ~ N(0, I) (reparameterized, so gradients reach mu and
sigma), so every sample is a valid image in [0, 1] that can be saved and looked at, and is normalized with
the teacher's mean and std only on its way into the teacher (`normalize`). The learned per-pixel noise is
small (it moved pixels by about 2% in a trained ResNet-20 generator); what varies an image's content is z,
which training makes matter through mode seeking on pooled images (`generators.trainer`). The latent
posterior term that would make it VAE-like (`generators.posterior`) is an option, off by default: the
measurements did not keep it.

Cost drives the layout: the stem projects (z, y) to a small feature map, each stage doubles the
resolution (nearest upsampling + 3x3 conv; a stride-2 transposed conv is the cheaper option, but leaves
checkerboard patterns and matched the BN statistics worse in our runs) and halves the width, and the head
is one 3x3 conv. For large inputs (224) the network generates at
`gen_size` and upsamples bilinearly inside, which keeps ImageNet teachers affordable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a ConditionalGenerator (saved with every checkpoint).

    num_classes: labels the generator is conditioned on.
    image_size: side of the images handed to the teacher.
    gen_size: side the conv stack generates at (None: image_size, or 64 when image_size > 64);
        bilinear upsampling covers the rest.
    latent_dim: size of z.
    base_size: side of the first feature map (gen_size / base_size must be a power of two).
    width: channels of the first feature map; each upsampling stage halves it (floored at min_width).
    embed_dim: size of the class embedding concatenated to z (0: none).
    conditional_bn: class-conditional BatchNorm (per-class scale and shift) in every stage.
    channels: image channels.
    logvar_min, logvar_max: bounds of the per-pixel log-variance (keeps sampling noise sane).
    """

    num_classes: int
    image_size: int = 32
    gen_size: int | None = None
    latent_dim: int = 128
    base_size: int = 8
    width: int = 64
    min_width: int = 16
    embed_dim: int = 64
    conditional_bn: bool = True
    upsample: str = "nearest"  # "nearest" (+ 3x3 conv) or "transpose" (stride-2 4x4 transposed conv, cheaper, checkerboards)
    channels: int = 3
    logvar_min: float = -8.0
    logvar_max: float = 0.0

    def __post_init__(self) -> None:
        if self.gen_size is None:
            object.__setattr__(self, "gen_size", self.image_size if self.image_size <= 64 else 64)
        ratio = self.gen_size / self.base_size
        if self.gen_size > self.image_size or ratio < 1 or not float(math.log2(ratio)).is_integer():
            raise ValueError(
                f"gen_size ({self.gen_size}) must be base_size ({self.base_size}) times a power of two and at most "
                f"image_size ({self.image_size})"
            )
        if self.num_classes < 1 or self.latent_dim < 1 or self.width < 1:
            raise ValueError("num_classes, latent_dim and width must be positive")
        if self.upsample not in ("transpose", "nearest"):
            raise ValueError(f"upsample must be 'transpose' or 'nearest', got {self.upsample!r}")
        if self.logvar_min >= self.logvar_max:
            raise ValueError("logvar_min must be below logvar_max")

    def to_dict(self) -> dict:
        return asdict(self)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, followed by a per-class scale and shift (1 + gamma_y, beta_y)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        return out * (1 + self.gamma(y))[:, :, None, None] + self.beta(y)[:, :, None, None]


class _Norm(nn.Module):
    """Plain or class-conditional BatchNorm behind one call signature."""

    def __init__(self, num_features: int, num_classes: int, conditional: bool) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm2d(num_features, num_classes) if conditional else nn.BatchNorm2d(num_features)
        self.conditional = conditional

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x, y) if self.conditional else self.norm(x)


class UpStage(nn.Module):
    """x2 resolution (stride-2 4x4 transposed conv, or nearest upsampling + 3x3 conv), conditional BN,
    LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, conditional: bool, mode: str = "transpose") -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False))
        self.norm = _Norm(out_ch, num_classes, conditional)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.up(x), y))


class ConditionalGenerator(nn.Module):
    """G(z, y) -> image in [0, 1] of shape (B, channels, image_size, image_size)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.num_classes, c.embed_dim) if c.embed_dim else None
        self.stem = nn.Linear(c.latent_dim + c.embed_dim, c.width * c.base_size**2)
        self.stem_norm = _Norm(c.width, c.num_classes, c.conditional_bn)
        stages, ch = [], c.width
        for _ in range(int(math.log2(c.gen_size // c.base_size))):
            out = max(ch // 2, c.min_width)
            stages.append(UpStage(ch, out, c.num_classes, c.conditional_bn, c.upsample))
            ch = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(ch, 2 * c.channels, 3, padding=1)  # per-pixel mean and log-variance

    def distribution(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel mean and log-variance in logit space, each (B, channels, image_size, image_size)."""
        c = self.config
        h = torch.cat([z, self.embed(y)], dim=1) if self.embed is not None else z
        h = self.stem(h).view(-1, c.width, c.base_size, c.base_size)
        h = F.leaky_relu(self.stem_norm(h, y), 0.2)
        for stage in self.stages:
            h = stage(h, y)
        mu, raw_logvar = self.head(h).chunk(2, dim=1)
        # squash the log-variance into [logvar_min, logvar_max]
        logvar = c.logvar_min + (c.logvar_max - c.logvar_min) * torch.sigmoid(raw_logvar)
        if c.gen_size != c.image_size:
            size = (c.image_size, c.image_size)
            mu = F.interpolate(mu, size=size, mode="bilinear", align_corners=False)
            logvar = F.interpolate(logvar, size=size, mode="bilinear", align_corners=False)
        return mu, logvar

    def forward(
        self, z: torch.Tensor, y: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1]; `sample=False` returns the mean image sigmoid(mu) instead of a sample.
        `generator` seeds the pixel noise (reproducible streams). `rows`: make only these rows of the batch
        (z, y), drawing the pixel noise of the whole batch all the same, as data-parallel processes that share
        one global batch do (`generators.parallel`)."""
        batch = len(z)
        if rows is not None:
            z, y = z[rows], y[rows]
        mu, logvar = self.distribution(z, y)
        if sample:
            eps = torch.randn((batch, *mu.shape[1:]), generator=generator, device=mu.device, dtype=mu.dtype)
            mu = mu + torch.exp(0.5 * logvar) * (eps if rows is None else eps[rows])
        return torch.sigmoid(mu)

    def sample_latent(self, n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=generator, device=device)


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of `normalize`: the teacher's normalized inputs back to [0, 1] pixels (clamped)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Map [0, 1] images to the teacher's input normalization."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
