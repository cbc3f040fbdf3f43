"""The 4D-STEM diffraction-pattern autoencoder (SPEC §4, seed 001).

Architecture (every conv 3 × 3, padding 1, with bias; batch norm after a conv only when its output
map is larger than 1 × 1 — the BN modules always exist, so the parameter count never changes):

* Encoder (1,924,003 parameters): conv_input 1→64 + BN + ReLU → conv_pre 64→128 + BN + ReLU →
  3 × ResNetBlock (ConvBlock + IdentityBlock + adaptive average pooling to max(1, size // 4)) →
  conv_post 128→64 + BN + ReLU → conv_final 64→1 + BN(1) → adaptive average pool 4 × 4 →
  Linear(16 → 32) + ReLU → a non-negative 32-D latent.
* Decoder (1,990,401 parameters): Linear(32 → 2048) → reshape (128, 4, 4) → conv_initial 128→128
  (no BN, no activation) → 3 × ResNetUpBlock (bilinear ×4, ConvBlock + IdentityBlock:
  4 → 16 → 64 → 256) → conv_final 128→1 → Sigmoid → bilinear resize to the output shape.
* Total 3,914,404 parameters for every input size from 32² up (the seed's "512×512+"; sides up to
  :data:`MAX_SIZE` are accepted, memory grows with H·W).

Inputs are (B, 1, H, W) patterns scaled to [0, 1] (the decoder ends in a Sigmoid); see
:func:`scale_patterns` for the log scaling used by ``phasestem train autoencoder``.

Bottleneck: the three pooling steps take 32² and 64² inputs to a 1 × 1 map (64 → 16 → 4 → 1), so
there the latent is a function of ONE scalar (conv_final's single channel, replicated by the 4 × 4
pooling); 128² gives 2 × 2 = 4 scalars, 256² and larger 4 × 4 = 16. The seed puts a ReLU after
conv_final; on a 1 × 1 map (no BN there) a negative scalar then zeroes the whole latent. Measured
(32² patterns, reduced width, 150 steps): with that ReLU all 32 latents were dead on held-out
patterns and the reconstruction was the mean pattern (16.4 dB vs 16.6 dB for the mean); without it
11 were dead and PSNR reached 17.9 dB. At 128² (2 × 2 map, BN active) both variants reached ≈ 21 dB
(21.6 with, 21.2 without; mean pattern 18.9). We therefore drop that ReLU by default
(``final_relu=True`` restores the seed; the parameter count is unaffected).

Loss (``compute_loss``): ``MSE + λ_act·mean|z| + λ_sim·contrastive + λ_div·divergence`` with the
seed's weights λ_act = 1e-4, λ_sim = 5e-5, λ_div = 2e-4 and

* contrastive = mean over pairs i ≠ j of ReLU(cos(z_i, z_j) − margin), one matrix product
  (O(B²) memory, no Python loop);
* divergence = mean over latent channels of 1 / (Var_batch(z) + div_eps).

Pitfalls of the seed's loss as written, measured on this model at initialisation (batch 16, 64²
uniform-random inputs, seed 0):

* ``margin = 1.0`` makes the contrastive term identically 0 (measured 3e-9: cosine similarity ≤ 1),
  so it never acts. The untrained ReLU latents have pairwise cosine ≈ 0.9999; our default
  ``margin = 0.5`` keeps the term active (0.4999 at start) and pushes embeddings apart.
* ``div_eps = 1e-8`` gives mean(1/var) = 5.4e7 (latent variances ≤ 6e-6, and 14 of 32 ReLU
  latents are exactly constant, each contributing 1e8), i.e. 1.1e4 after λ_div against an MSE of
  0.094: the total loss is the divergence term. Where the latents are dead its gradient is zero
  anyway, so it cannot revive them. Our default ``div_eps = 1.0`` bounds the term by 1 (≤ 2e-4 after
  λ_div) while keeping a gradient towards larger variance; ``div_eps=1e-8`` restores the seed's form.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...base.configfile import StrictModel
from ...base.errors import ShapeError

log = logging.getLogger("phasestem.learn.autoencoder")

__all__ = [
    "Autoencoder", "Encoder", "Decoder", "ConvBlock", "IdentityBlock", "ResNetBlock", "ResNetUpBlock",
    "contrastive_loss", "divergence_loss", "scale_patterns",
    "AutoencoderModelConfig", "AutoencoderLossConfig",
    "ENCODER_PARAMETERS", "DECODER_PARAMETERS", "TOTAL_PARAMETERS",
]

ENCODER_PARAMETERS = 1_924_003
DECODER_PARAMETERS = 1_990_401
TOTAL_PARAMETERS = 3_914_404
#: accepted input sides (px): 32 is the smallest the three pooling stages keep ≥ 1 px; the upper bound only
#: catches a wrong axis order (a (H·W)-long side), the network itself is fully convolutional
MIN_SIZE, MAX_SIZE = 32, 4096

DEFAULT_LAMBDA_ACT = 1e-4
DEFAULT_LAMBDA_SIM = 5e-5
DEFAULT_LAMBDA_DIV = 2e-4
DEFAULT_MARGIN = 0.5
DEFAULT_DIV_EPS = 1.0


class ConvBNReLU(nn.Module):
    """3 × 3 conv (+ batch norm when the output map is > 1 × 1) (+ ReLU)."""

    def __init__(self, c_in: int, c_out: int, bn: bool = True, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor, relu: bool | None = None) -> torch.Tensor:
        out = self.conv(x)
        if self.bn is not None and (out.shape[-1] > 1 or out.shape[-2] > 1):
            out = self.bn(out)
        return F.relu(out) if (self.relu if relu is None else relu) else out


class ConvBlock(nn.Module):
    """Three conv+BN layers, ReLU after the first two, skip added before the last ReLU.

    A 1 × 1 skip conv exists only when ``c_in != c_out`` (never in this model).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNReLU(c_in, c_out)
        self.conv2 = ConvBNReLU(c_out, c_out)
        self.conv3 = ConvBNReLU(c_out, c_out, relu=False)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + skip)


class IdentityBlock(ConvBNReLU):
    """One conv + BN + ReLU (channel count kept)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels)


class ResNetBlock(nn.Module):
    """ConvBlock → IdentityBlock → adaptive average pooling to max(1, size // pool)."""

    def __init__(self, c_in: int, c_out: int, pool: int = 4):
        super().__init__()
        self.conv_block = ConvBlock(c_in, c_out)
        self.identity = IdentityBlock(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.identity(self.conv_block(x))
        size = (max(1, x.shape[-2] // self.pool), max(1, x.shape[-1] // self.pool))
        return F.adaptive_avg_pool2d(x, size)


class ResNetUpBlock(nn.Module):
    """Bilinear up-sampling ×``scale`` → ConvBlock → IdentityBlock."""

    def __init__(self, c_in: int, c_out: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.conv_block = ConvBlock(c_in, c_out)
        self.identity = IdentityBlock(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.identity(self.conv_block(x))


class Encoder(nn.Module):
    """(B, 1, H, W) patterns, 32 ≤ H, W ≤ :data:`MAX_SIZE` → (B, latent_dim) non-negative embeddings."""

    def __init__(self, latent_dim: int = 32, channels: int = 128, n_blocks: int = 3, final_relu: bool = False):
        super().__init__()
        self.conv_input = ConvBNReLU(1, 64)
        self.conv_pre = ConvBNReLU(64, channels)
        self.blocks = nn.ModuleList(ResNetBlock(channels, channels) for _ in range(n_blocks))
        self.conv_post = ConvBNReLU(channels, 64)
        self.conv_final = ConvBNReLU(64, 1, relu=final_relu)
        self.embedding = nn.Linear(16, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(self.conv_input(x))
        for block in self.blocks:
            x = block(x)
        x = self.conv_final(self.conv_post(x))
        x = F.adaptive_avg_pool2d(x, (4, 4)).flatten(1)
        return F.relu(self.embedding(x))


class Decoder(nn.Module):
    """(B, latent_dim) → (B, 1, *out_shape) in (0, 1); always starts from a 128 × 4 × 4 map."""

    def __init__(self, latent_dim: int = 32, channels: int = 128, n_blocks: int = 3):
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(latent_dim, channels * 16)
        self.conv_initial = nn.Conv2d(channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResNetUpBlock(channels, channels) for _ in range(n_blocks))
        self.conv_final = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
        x = self.conv_initial(self.linear(z).view(-1, self.channels, 4, 4))
        for block in self.blocks:
            x = block(x)
        x = torch.sigmoid(self.conv_final(x))
        if tuple(x.shape[-2:]) != tuple(out_shape):
            x = F.interpolate(x, size=tuple(out_shape), mode="bilinear", align_corners=False)
        return x


def contrastive_loss(z: torch.Tensor, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """mean over pairs i ≠ j of ReLU(cos(z_i, z_j) − margin); z (B, D); 0 for B < 2. Vectorised."""
    b = z.shape[0]
    if b < 2:
        return z.new_zeros(())
    zn = F.normalize(z, p=2, dim=1, eps=1e-12)
    sim = zn @ zn.T
    off = ~torch.eye(b, dtype=torch.bool, device=z.device)
    return F.relu(sim[off] - margin).mean()


def divergence_loss(z: torch.Tensor, eps: float = DEFAULT_DIV_EPS) -> torch.Tensor:
    """mean over channels of 1 / (Var over the batch of z + eps); z (B, D); 0 for B < 2."""
    if z.shape[0] < 2:
        return z.new_zeros(())
    return (1.0 / (z.var(dim=0) + eps)).mean()


class Autoencoder(nn.Module):
    """Encoder + decoder; ``out_shape=None`` reconstructs at the input size.

    ``channels`` (128) and ``decoder_blocks`` (3: 4 → 256 px before the final resize) give the SPEC
    model; smaller values make a cheap model of the same design for tests (the full decoder runs four
    128-channel convs on 256² maps: ≈ 40 GMAC per pattern). ``final_relu=True`` restores the seed's
    ReLU after conv_final (see the module docstring).

    ``model(x)`` → reconstruction (B, 1, *out_shape); ``model.embed(x)`` → latent (B, latent_dim);
    ``model.encode_decode(x)`` → both in one pass. ``x``: (B, 1, H, W) or (B, H, W), 32 ≤ H, W ≤ :data:`MAX_SIZE`.
    """

    def __init__(self, latent_dim: int = 32, out_shape: tuple[int, int] | None = (256, 256), *,
                 channels: int = 128, decoder_blocks: int = 3, final_relu: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.out_shape = tuple(out_shape) if out_shape is not None else None
        self.encoder = Encoder(latent_dim, channels, final_relu=final_relu)
        self.decoder = Decoder(latent_dim, channels, decoder_blocks)

    @staticmethod
    def _check(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ShapeError(f"autoencoder input must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if not (MIN_SIZE <= h <= MAX_SIZE and MIN_SIZE <= w <= MAX_SIZE):
            raise ShapeError(f"autoencoder input side must be in [{MIN_SIZE}, {MAX_SIZE}] px, got {h}×{w}")
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors (B, latent_dim), non-negative."""
        return self.encoder(self._check(x))

    def decode(self, z: torch.Tensor, out_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Reconstruction (B, 1, *out_shape) from latents (B, latent_dim)."""
        shape = out_shape or self.out_shape
        if shape is None:
            raise ShapeError("decode needs out_shape (the model was built with out_shape=None)")
        return self.decoder(z, shape)

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latent) in one pass."""
        x = self._check(x)
        z = self.encoder(x)
        return self.decoder(z, self.out_shape or tuple(x.shape[-2:])), z

    def forward(self, x: torch.Tensor, return_latent: bool = False):
        """Reconstruction (B, 1, *out_shape); with ``return_latent`` the tuple (reconstruction, latent)."""
        x_hat, z = self.encode_decode(x)
        return (x_hat, z) if return_latent else x_hat

    def compute_loss(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        z: torch.Tensor,
        lambda_act: float = DEFAULT_LAMBDA_ACT,
        lambda_sim: float = DEFAULT_LAMBDA_SIM,
        lambda_div: float = DEFAULT_LAMBDA_DIV,
        margin: float = DEFAULT_MARGIN,
        div_eps: float = DEFAULT_DIV_EPS,
    ) -> dict[str, torch.Tensor]:
        """Loss components: ``loss`` (total), ``mse``, ``activation``, ``contrastive``, ``divergence``.

        The three regularisers are returned unweighted; ``loss`` applies the λ's. ``x`` is resized
        to ``x_hat``'s shape when they differ (bilinear).
        """
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[-2:] != x_hat.shape[-2:]:
            x = F.interpolate(x, size=tuple(x_hat.shape[-2:]), mode="bilinear", align_corners=False)
        mse = F.mse_loss(x_hat, x)
        act = z.abs().mean()
        sim = contrastive_loss(z, margin)
        div = divergence_loss(z, div_eps)
        total = mse + lambda_act * act + lambda_sim * sim + lambda_div * div
        return {"loss": total, "mse": mse, "activation": act, "contrastive": sim, "divergence": div}


def scale_patterns(patterns: torch.Tensor, mode: str = "log", floor: float = 1e-3) -> torch.Tensor:
    """Map diffraction patterns (..., H, W) ≥ 0 to [0, 1] per pattern for the Sigmoid decoder.

    ``"max"``: x / max(x). ``"log"``: log1p(x / (floor·max)) / log1p(1 / floor), which keeps the dark
    field (counts down to ``floor`` of the peak) visible next to the bright disc.
    """
    x = patterns.float().clamp_min(0)
    peak = x.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    if mode == "max":
        return x / peak
    if mode == "log":
        return torch.log1p(x / (floor * peak)) / math.log1p(1.0 / floor)
    raise ValueError(f"pattern scaling mode must be 'log' or 'max', got {mode!r}")


class AutoencoderModelConfig(StrictModel):
    """Autoencoder architecture (defaults = SPEC §4, 3,914,404 parameters)."""

    latent_dim: int = Field(32, ge=1, description="latent dimension")
    channels: int = Field(128, ge=4, description="ResNet-block channels (128 in the SPEC model)")
    decoder_blocks: int = Field(3, ge=1, le=4, description="decoder up-blocks ×4 each (3: 4 → 256 px)")
    out_shape: tuple[int, int] | None = Field(None, description="reconstruction size (None: the input size)")
    final_relu: bool = Field(False, description="the seed's ReLU after the encoder's 1-channel conv_final "
                             "(off: on 1×1 maps it can zero the whole latent)")


class AutoencoderLossConfig(StrictModel):
    """Weights of MSE + λ_act·L1(z) + λ_sim·contrastive + λ_div·divergence (see learn.nets.autoencoder)."""

    lambda_act: float = Field(DEFAULT_LAMBDA_ACT, ge=0, description="weight of the latent L1 term")
    lambda_sim: float = Field(DEFAULT_LAMBDA_SIM, ge=0, description="weight of the contrastive term")
    lambda_div: float = Field(DEFAULT_LAMBDA_DIV, ge=0, description="weight of the divergence term")
    margin: float = Field(DEFAULT_MARGIN, ge=-1, le=1, description="cosine margin of the contrastive term "
                          "(1.0 makes it identically zero)")
    div_eps: float = Field(DEFAULT_DIV_EPS, gt=0, description="ε of mean(1/(var+ε)); 1e-8 (seed) gives ~1e7")
