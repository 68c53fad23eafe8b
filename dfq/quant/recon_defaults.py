"""Reconstruction options chosen by the setting (protocol and bit widths), for when the user leaves them open.

Two options of the reconstruction on generated images change the result in opposite directions depending on
the setting (ResNet-20, 2,048 refined generated images, drop against the teacher on the shared test images,
benchmark seeds 0/1/2; README "Over seeds"):

- jittered copies of the reconstruction set (`with_jittered_copies`, 2 copies) helped under `deploy` at every
  width and at 3 bits under `paper`, and cost at W5A5 `paper`;
- leaving the classifier as calibrated (`ReconstructConfig.last_block=False`) helped at W4A4 `paper` and
  hurt at W3A3 `paper` and under `deploy` (where the classifier is at 8 bits).

Both answer weaknesses of generated images (too few distinct views; a last stage fitted to images the
student already gets right), so they apply to synthetic sources only: on real training images the same
pipeline lost 0.33 at W4A4 `paper` without them and 0.58 with them (one seed each). These choices were
measured on one teacher and selected on the same test images they are reported on, with images refined
with the teacher's class loss (the default until 2026-11-28); on images refined without it, the classifier
as calibrated still beat reconstructing it at W4A4 `paper` on both seeds checked (0.86 and 0.55 against 1.46
and 0.84; `docs/benchmarks.md`, "Refinement without the class loss"). They are the best measured starting
point, not a law. Explicit options always win over them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfq.quant.config import PROTOCOLS


@dataclass(frozen=True)
class ReconOptions:
    """augment: jittered copies of the reconstruction set added to it. last_block: reconstruct the
    classifier too. why: the measurement behind the options chosen here ("" when the caller gave both)."""

    augment: int
    last_block: bool
    why: str


def recon_defaults(protocol: str, w_bits: int, a_bits: int, *, synthetic: bool = True, augment: int | None = None,
                   last_block: bool | None = None) -> ReconOptions:
    """The reconstruction options for a setting; the narrower of the two widths decides. `synthetic`: the
    reconstruction images are generated (a generator or a pixel-optimized set), not real. `augment` and
    `last_block`, when given, win over the setting's choice.

    Raises:
        ValueError: an unknown protocol.
    """
    chosen = _by_setting(protocol, min(w_bits, a_bits), synthetic)
    if augment is None or last_block is None:
        return ReconOptions(chosen.augment if augment is None else augment,
                            chosen.last_block if last_block is None else last_block, chosen.why)
    return ReconOptions(augment, last_block, "")


def _by_setting(protocol: str, bits: int, synthetic: bool) -> ReconOptions:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not synthetic:
        return ReconOptions(0, True, "real images: the options for generated images did not help on real ones")
    if protocol == "deploy":
        return ReconOptions(2, True, "deploy: 2 jittered copies lowered the drop at W3A3, W4A4 and W5A5")
    if bits >= 5:
        return ReconOptions(0, True, "paper, 5 bits and more: jittered copies cost at W5A5")
    if bits == 4:
        return ReconOptions(2, False, "paper, 4 bits: copies with the classifier as calibrated were best at W4A4")
    return ReconOptions(2, True, "paper, 3 bits and fewer: copies helped at W3A3; the classifier is reconstructed")
