"""Learned-route networks: shapes/dtypes, End2End gradients, exact stitching, offline pretrained loading."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from phasestem.base.errors import ConfigError, InputFileError
from phasestem.learn.backbones import adapt_first_conv, create_cnn, create_vit
from phasestem.learn.data import BlockGeometry, extract_patches
from phasestem.learn.nets.end2end import End2End, FreezePatchNet, end2end_loss_fn
from phasestem.learn.nets.patch import PatchRecoveryConfig, PatchRecoveryNet
from phasestem.learn.nets.stitch import PhaseStitchingConfig, PhaseStitchingNet, stitch_loss_fn
from phasestem.learn.trainer import save_weights

SMALL = BlockGeometry(scan_shape=(12, 12), phase_shape=(48, 48), phase_sampling=(0.5, 0.5), block=6, stride=3,
                      patch=24)


def tiny_pair():
    torch.manual_seed(0)
    pn = PatchRecoveryNet({"size": "tiny", "block": 6, "patch": 24})
    sn = PhaseStitchingNet({"size": "tiny", "image_size": 48, "patch": 24, "vit_patch": 8})
    return pn, sn


def test_stitch_validation_sees_the_training_noise_from_a_fixed_seed():
    """Clean validation patches would reward a net that copies them; validation gets seeded noise instead."""
    _, sn = tiny_pair()
    n = SMALL.n_blocks
    batch = {"patches": torch.rand(2, n, 24, 24), "centres": torch.tensor(SMALL.centres(), dtype=torch.float32)
             .expand(2, n, 2), "phase": torch.rand(2, 48, 48)}
    noisy, clean = stitch_loss_fn(noise=0.3), stitch_loss_fn(noise=0.0)
    sn.eval()
    with torch.no_grad():
        a, b, c = noisy(sn, batch)["loss"], noisy(sn, batch)["loss"], clean(sn, batch)["loss"]
        sn.train()
        d, e = noisy(sn, batch)["loss"], noisy(sn, batch)["loss"]
    assert a == b and a != c  # validation: the same noise every time, and not the clean loss
    assert d != e  # training: fresh noise each call


def test_full_size_shapes_tiny_models():
    """Seed geometry (196 patterns of 64², 25 patches of 76², 256² output) through the tiny variants."""
    g = BlockGeometry()
    pn = PatchRecoveryNet({"size": "tiny"})
    out = pn(torch.rand(1, 196, 64, 64), torch.from_numpy(g.block_coords())[None])
    assert out.shape == (1, 76, 76) and out.dtype == torch.float32
    sn = PhaseStitchingNet({"size": "tiny"})
    phase = torch.randn(2, 256, 256)
    centres = torch.from_numpy(g.centres()).expand(2, -1, -1)
    img = sn(extract_patches(phase, g), centres)
    assert img.shape == (2, 256, 256) and img.dtype == torch.float32
    # an untrained stitching net reproduces the phase exactly from its own patches, across the wrap
    torch.testing.assert_close(img, phase, atol=1e-5, rtol=0)


def test_full_size_base_configs_resolve():
    cfg = PatchRecoveryConfig(size="base")
    assert (cfg.cnn, cfg.vit, cfg.block, cfg.patch) == ("resnet34", "vit_base", 14, 76)
    assert PatchRecoveryConfig(size="tiny", vit="vit_tiny_d2").vit == "vit_tiny_d2"
    assert PhaseStitchingConfig(size="base").vit == "vit_base"
    with pytest.raises(ValueError, match="extra"):
        PatchRecoveryConfig(size="tiny", nonsense=1)


def test_end2end_shapes_and_gradients_reach_both_nets():
    pn, sn = tiny_pair()
    model = End2End(pn, sn)
    B = 2
    phase = torch.randn(B, 48, 48)
    coords = torch.from_numpy(SMALL.block_coords()).expand(B, 9, -1, -1)
    batch = {"patterns": torch.rand(B, 9, 36, 8, 8), "coords": coords,
             "centres": torch.from_numpy(SMALL.centres()).expand(B, -1, -1), "phase": phase,
             "patches": extract_patches(phase, SMALL)}
    out = model(batch["patterns"], batch["coords"], batch["centres"])
    assert out["patches"].shape == (B, 9, 24, 24) and out["phase"].shape == (B, 48, 48)
    assert out["patches"].dtype == out["phase"].dtype == torch.float32
    # image-only loss: its gradient must reach the patch network through the stitching canvas
    loss = end2end_loss_fn(patch_weight=0.0, image_weight=1.0)(model, batch)
    loss["loss"].backward()
    g_patch = sum(p.grad.abs().sum() for p in pn.parameters() if p.grad is not None)
    g_stitch = sum(p.grad.abs().sum() for p in sn.parameters() if p.grad is not None)
    assert g_patch > 0 and g_stitch > 0
    assert pn.cnn.conv1[0].weight.grad.abs().sum() > 0  # all the way to the first conv

    # gradient checkpointing over chunks of blocks gives the same gradients as the same chunks stored
    grads = []
    for ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        model.patch_chunk, model.grad_checkpoint = 4, ckpt
        end2end_loss_fn(patch_weight=0.0, image_weight=1.0)(model, batch)["loss"].backward()
        grads.append([p.grad.clone() for p in pn.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    model.patch_chunk, model.grad_checkpoint = None, False

    # freezing: no gradients for the patch net, the stitching net still learns
    model.zero_grad(set_to_none=True)

    class T:
        unwrapped_model = model

    FreezePatchNet(1).on_epoch_start(T, 0)
    end2end_loss_fn()(model, batch)["loss"].backward()
    assert all(p.grad is None for p in pn.parameters())
    assert any(p.grad is not None for p in sn.parameters())
    FreezePatchNet(1).on_epoch_start(T, 1)
    assert all(p.requires_grad for p in pn.parameters())


def test_offset_free_losses_ignore_each_images_constant_and_raw_ones_do_not():
    """A prediction off the truth by a different constant per image (the phase offset ptychography cannot see) costs
    nothing with ``offset_free`` at every stage, and the offset squared without it; the reported MSE and PSNR
    follow the loss."""
    from phasestem.learn.nets.patch import patch_loss_fn

    class Shifted(torch.nn.Module):  # returns the truth plus a per-image constant, whatever its inputs
        def __init__(self, truth, key):
            super().__init__()
            self.truth, self.key = truth, key
            self.offset = torch.tensor([0.3, -0.5]).view(2, *([1] * (truth.ndim - 1)))

        def forward(self, *args):
            out = self.truth + self.offset
            return {"patches": out, "phase": out} if self.key else out

    truth = torch.randn(2, 24, 24)
    raw_expected = (0.3 ** 2 + 0.5 ** 2) / 2
    batch = {"patterns": None, "coords": None, "centres": None, "target": truth, "patches": truth, "phase": truth}
    for name, make in (("patch", lambda free: patch_loss_fn("mse", free)),
                       ("stitch", lambda free: stitch_loss_fn("mse", 0.0, free)),
                       ("end2end", lambda free: end2end_loss_fn(0.5, 1.0, "mse", offset_free=free))):
        model = Shifted(truth, name == "end2end")
        free, raw = make(True)(model, batch), make(False)(model, batch)
        assert float(free["loss"]) == pytest.approx(0.0, abs=1e-10), name
        assert float(raw["loss"]) == pytest.approx(raw_expected * (1.5 if name == "end2end" else 1.0), rel=1e-5), name
        # the reported MSE and PSNR (the monitor that picks the best model) judge what the loss judges
        assert float(free["mse"]) == pytest.approx(0.0, abs=1e-10) and float(free["psnr"]) > 100, name
        assert float(raw["mse"]) == pytest.approx(raw_expected, rel=1e-5) and float(raw["psnr"]) < 30, name


def test_end2end_from_checkpoints(tmp_path):
    pn, sn = tiny_pair()
    save_weights(pn.state_dict(), tmp_path / "p.safetensors",
                 {"model": {"kind": "patch", "config": pn.config.model_dump()}})
    save_weights(sn.state_dict(), tmp_path / "s.safetensors",
                 {"model": {"kind": "stitch", "config": sn.config.model_dump()}})
    model = End2End.from_checkpoints(tmp_path / "p.safetensors", tmp_path / "s.safetensors")
    torch.testing.assert_close(model.patch_net.cnn.conv1[0].weight, pn.cnn.conv1[0].weight)
    with pytest.raises(ConfigError, match="expected a 'patch' checkpoint"):
        End2End.from_checkpoints(tmp_path / "s.safetensors", tmp_path / "s.safetensors")


def test_patch_net_uses_coordinates():
    pn, _ = tiny_pair()
    pn.eval()
    x = torch.rand(1, 36, 8, 8)
    c = torch.from_numpy(SMALL.block_coords())[None]
    assert not torch.allclose(pn(x, c), pn(x, c * 1.5))  # another scan step changes the prediction


def test_pretrained_roundtrip_with_one_channel_adaptation(tmp_path):
    torch.manual_seed(1)
    ref = create_cnn("resnet_micro", in_chans=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "cnn.safetensors"))
    got = create_cnn("resnet_micro", in_chans=1, pretrained=tmp_path / "cnn.safetensors")
    first = "conv1.0.weight"  # the deep stem's first convolution
    torch.testing.assert_close(got.state_dict()[first], ref.state_dict()[first].sum(1, keepdim=True))
    mean = create_cnn("resnet_micro", in_chans=1, pretrained=tmp_path / "cnn.safetensors", first_conv="mean")
    torch.testing.assert_close(mean.state_dict()[first], ref.state_dict()[first].mean(1, keepdim=True))
    for k, v in ref.state_dict().items():
        if k != first:
            torch.testing.assert_close(got.state_dict()[k], v)
    # ViT: 3-channel 224-px weights (14×14 grid) into a 1-channel model at 112 px (7×7 grid) via torch file
    vref = create_vit("vit_micro", in_chans=3)
    torch.save(vref.state_dict(), tmp_path / "vit.pth")
    vit = create_vit("vit_micro", img_size=112, in_chans=1, pretrained=tmp_path / "vit.pth")
    torch.testing.assert_close(vit.patch_embed.proj.weight, vref.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, vref.blocks[1].mlp.fc2.weight)
    assert vit.pos_embed.shape == (1, 1 + 49, 64)
    torch.testing.assert_close(vit.pos_embed[:, 0], vref.pos_embed[:, 0])  # class token position kept
    # through the network constructor: the ViT's learned 14×14 grid reaches PatchRecoveryNet
    pn = PatchRecoveryNet({"size": "tiny", "vit_pretrained": str(tmp_path / "vit.pth")})
    torch.testing.assert_close(pn.grid_pos, vref.pos_embed[:, 1:], atol=1e-5, rtol=0)


def test_pretrained_errors_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PHASESTEM_PRETRAINED_DIR", raising=False)
    with pytest.raises(InputFileError, match="no local weights for 'resnet18'.*huggingface-cli download"):
        create_cnn("resnet_micro", pretrained="auto")
    with pytest.raises(InputFileError, match="not found"):
        create_cnn("resnet_micro", pretrained=tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConfigError, match="do not fit backbone"):
        create_cnn("resnet_micro", pretrained=tmp_path / "wrong.safetensors")
    # "auto" finds weights placed in PHASESTEM_PRETRAINED_DIR
    ref = create_cnn("resnet_micro", in_chans=3)
    monkeypatch.setenv("PHASESTEM_PRETRAINED_DIR", str(tmp_path))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    got = create_cnn("resnet_micro", pretrained="auto")
    torch.testing.assert_close(got.conv1[0].weight, ref.conv1[0].weight.sum(1, keepdim=True))


def test_adapt_first_conv_rules():
    w = torch.randn(4, 3, 3, 3)
    assert adapt_first_conv(w, 3) is w
    assert adapt_first_conv(w, 2).shape == (4, 2, 3, 3)
