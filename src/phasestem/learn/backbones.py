"""CNN and ViT trunks from timm, with offline-safe pretrained loading (timm style: a registry of presets).

Presets (``CNN_PRESETS`` / ``VIT_PRESETS``) name a timm architecture plus overrides, from full
size (ResNet34, ViT-B/16 with its 14 × 14 position grid at 224 px) down to tiny variants that
train on a CPU in seconds.

Pretrained weights (``pretrained=``)
------------------------------------
* ``None`` — random initialisation.
* a path — a ``.safetensors`` / ``.pth`` / ``.bin`` file (or a folder holding one) with a timm
  state_dict for the preset's architecture (``torch.load(weights_only=True)``).
* ``"auto"`` — the timm default weights for the architecture, found in the *local* caches only:
  ``$PHASESTEM_PRETRAINED_DIR/<arch>*.safetensors``, the Hugging Face hub cache
  (``huggingface_hub.try_to_load_from_cache``) and torch-hub's ``checkpoints/`` folder. Nothing is
  downloaded unless ``allow_download=True`` *and* ``HF_HUB_OFFLINE`` is unset; when the weights
  are not there an :class:`~phasestem.base.errors.InputFileError` says where it looked and how to
  fetch them.

Adaptation: the first convolution's RGB weights are summed (``first_conv="sum"``, timm's rule; it
keeps the response to a grey image) or averaged (``"mean"``, the user's first attempt) into one
channel; ViT position embeddings are resampled to the model's grid (timm's
``checkpoint_filter_fn``); classifier heads are dropped (``num_classes=0``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..base.errors import ConfigError, InputFileError
from ..base.extras import require

log = logging.getLogger("phasestem.learn")


@dataclass(frozen=True)
class Preset:
    """A named timm architecture with keyword overrides."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


CNN_PRESETS: dict[str, Preset] = {}
VIT_PRESETS: dict[str, Preset] = {}


def register_cnn(name: str, arch: str, description: str = "", **kwargs) -> None:
    CNN_PRESETS[name] = Preset(arch, kwargs, description)


def register_vit(name: str, arch: str, description: str = "", **kwargs) -> None:
    VIT_PRESETS[name] = Preset(arch, kwargs, description)


register_cnn("resnet34", "resnet34", "ResNet34 (21.3 M), the seed's pattern encoder")
register_cnn("resnet18", "resnet18", "ResNet18 (11.2 M)")
register_cnn("resnet10t", "resnet10t", "ResNet10-T (4.9 M)")
register_cnn("resnet_tiny", "resnet18", "4 BasicBlocks, widths 16-128, 3-conv stem (0.3 M), for CPU runs",
             layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=8, stem_type="deep")
register_cnn("resnet_micro", "resnet18", "4 BasicBlocks, widths 8-32, 3-conv stem (40 k), for tests",
             layers=(1, 1, 1, 1), channels=(8, 16, 32, 32), stem_width=4, stem_type="deep")

register_vit("vit_base", "vit_base_patch16_224", "ViT-B/16 (86 M, 768-d, 12 blocks), as the seed")
register_vit("vit_small", "vit_small_patch16_224", "ViT-S/16 (22 M, 384-d, 12 blocks)")
register_vit("vit_tiny", "vit_tiny_patch16_224", "ViT-Ti/16 (5.7 M, 192-d, 12 blocks)")
register_vit("vit_tiny_d2", "vit_tiny_patch16_224", "ViT-Ti/16 cut to 2 blocks (0.9 M)", depth=2)
register_vit("vit_micro", "vit_tiny_patch16_224", "64-d, 2 blocks, 2 heads (0.16 M), for unit tests",
             depth=2, embed_dim=64, num_heads=2)


def _preset(name: str, table: dict[str, Preset], kind: str) -> Preset:
    if name in table:
        return table[name]
    import timm

    if timm.is_model(name):  # any timm architecture name works too
        return Preset(name)
    raise ConfigError(f"unknown {kind} backbone '{name}': expected one of {sorted(table)} or a timm model name")


# ---------------------------------------------------------------------------------------------
# locating and reading weights
# ---------------------------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")


def cached_weight_candidates(arch: str) -> list[Path]:
    """Places where ``pretrained="auto"`` looks for the default weights of timm architecture ``arch``."""
    import timm

    cands: list[Path] = []
    env = os.environ.get("PHASESTEM_PRETRAINED_DIR")
    if env:
        d = Path(env)
        cands += sorted(d.glob(f"{arch}*.safetensors")) + sorted(d.glob(f"{arch}*.pth"))
        cands.append(d / f"{arch}.safetensors")
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(cfg.hf_hub_id, fname)
                if isinstance(hit, str):
                    cands.append(Path(hit))
        except ImportError:  # pragma: no cover
            pass
        from huggingface_hub.constants import HF_HUB_CACHE

        cands.append(Path(HF_HUB_CACHE) / ("models--" + cfg.hf_hub_id.replace("/", "--")))
    if cfg is not None and cfg.url:
        cands.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url))
    return cands


def find_cached_weights(arch: str) -> Path | None:
    """The first existing weights file among :func:`cached_weight_candidates`, else ``None``."""
    for c in cached_weight_candidates(arch):
        if c.is_file():
            return c
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a safetensors/torch file or a folder holding one (never unpickles objects)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pth")) + sorted(path.glob("*.bin")) + \
            sorted(path.glob("*.pt"))
        if not files:
            raise InputFileError(f"{path}: folder holds no .safetensors/.pth/.bin/.pt weights")
        path = files[0]
    if not path.is_file():
        raise InputFileError(f"{path}: pretrained weights file not found")
    from .trainer.checkpoint import read_safetensors, torch_load

    if path.suffix == ".safetensors":
        sd = read_safetensors(path)[0]
    else:
        sd = torch_load(path, "cpu", "pretrained weights file")
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise InputFileError(f"{path}: expected a state_dict (names → tensors), found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def adapt_first_conv(weight: torch.Tensor, in_chans: int, mode: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """RGB conv weights (O, 3, k, k) → (O, in_chans, k, k): one channel by sum/mean, more by repetition."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True) if mode == "sum" else weight.mean(1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    w = weight.repeat(1, reps, 1, 1)[:, :in_chans]
    return w * (weight.shape[1] / in_chans)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, in_chans: int, first_conv_mode: str,
               source: str) -> None:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    own = model.state_dict()
    for k, v in list(state.items()):  # the input convolution(s): RGB → in_chans
        if v.ndim == 4 and k in own and own[k].ndim == 4 and v.shape[1] != own[k].shape[1] \
                and own[k].shape[1] == in_chans and v.shape[0] == own[k].shape[0]:
            state[k] = adapt_first_conv(v.float(), in_chans, first_conv_mode)  # type: ignore[arg-type]
    if hasattr(model, "pos_embed"):
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)
    classifier = (cfg.classifier if cfg is not None and cfg.classifier else "fc")
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(classifier + ".")]
    if missing or unexpected:
        raise ConfigError(
            f"{source}: weights do not fit backbone '{arch}' ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}); use weights of the same architecture and size"
        )
    log.info("loaded pretrained %s weights from %s", arch, source)


def load_pretrained(model: nn.Module, arch: str, pretrained: str | Path | None, in_chans: int = 1,
                    first_conv: Literal["sum", "mean"] = "sum", allow_download: bool = False) -> bool:
    """Load ``pretrained`` (None | path | "auto") into a timm ``model`` of architecture ``arch``.

    Returns True when weights were loaded. See the module docstring for the search order.
    """
    if pretrained is None or pretrained is False:
        return False
    if str(pretrained) == "auto":
        path = find_cached_weights(arch)
        if path is None:
            if allow_download and not _offline():
                import timm

                ref = timm.create_model(arch, pretrained=True, num_classes=0)
                _load_into(model, dict(ref.state_dict()), arch, in_chans, first_conv, f"timm hub ({arch})")
                return True
            import timm

            hub = getattr(timm.models.get_pretrained_cfg(arch), "hf_hub_id", None) or arch
            places = "; ".join(str(c) for c in cached_weight_candidates(arch)) or "(none)"
            raise InputFileError(
                f"pretrained='auto': no local weights for '{arch}' (looked in: {places}). Fetch them once with "
                f"`huggingface-cli download {hub}` (or put <arch>.safetensors in $PHASESTEM_PRETRAINED_DIR), give a "
                "file path, or use pretrained: null for random initialisation"
                + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
            )
        _load_into(model, read_state_dict(path), arch, in_chans, first_conv, str(path))
        return True
    _load_into(model, read_state_dict(pretrained), arch, in_chans, first_conv, str(pretrained))
    return True


# ---------------------------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------------------------
def create_cnn(name: str = "resnet34", in_chans: int = 1, pretrained: str | Path | None = None,
               first_conv: Literal["sum", "mean"] = "sum", allow_download: bool = False, **overrides) -> nn.Module:
    """A CNN trunk (``num_classes=0``, average-pooled features; width ``model.num_features``)."""
    timm = require("timm", "the learned networks' CNN backbones")

    p = _preset(name, CNN_PRESETS, "CNN")
    kwargs = {**p.kwargs, **overrides}
    model = timm.create_model(p.arch, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    load_pretrained(model, p.arch, pretrained, in_chans, first_conv, allow_download)
    return model


def create_vit(name: str = "vit_base", img_size: int = 224, in_chans: int = 3, pretrained: str | Path | None = None,
               first_conv: Literal["sum", "mean"] = "sum", allow_download: bool = False, **overrides) -> nn.Module:
    """A timm VisionTransformer (``num_classes=0``); a 16-px patch at 224 px gives the 14 × 14 grid."""
    timm = require("timm", "the learned networks' ViT backbones")

    p = _preset(name, VIT_PRESETS, "ViT")
    kwargs = {**p.kwargs, **overrides}
    model = timm.create_model(p.arch, pretrained=False, num_classes=0, img_size=img_size, in_chans=in_chans, **kwargs)
    load_pretrained(model, p.arch, pretrained, in_chans, first_conv, allow_download)
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())
