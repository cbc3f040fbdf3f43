"""Phaseformer (SPEC §5): architecture, phase-only transform, losses against hand-computed values,
learnable weights in the optimiser, paired data sources, checkpoints, CLI, and a small learning test."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phasestem import metrics
from phasestem.base.errors import ConfigError, InputFileError, ShapeError
from phasestem.learn import losses as L
from phasestem.learn.nets.phaseformer import ECA, Phaseformer, PhaseformerLoss, phase_only
from phasestem.learn.pairs import Degrade, degrade, paired_dataset, write_pairs

TINY = dict(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement_blocks=1)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_published_size_and_output_shapes(one_thread):
    net = Phaseformer().eval()
    n = sum(p.numel() for p in net.parameters())
    assert n == 1_818_799  # ≈ 1.8 M as published; locks the architecture
    with torch.no_grad():
        for s in (64, 256):
            lo, hi = net(torch.randn(1, 1, s, s))
            assert lo.shape == (1, 1, s, s) and hi.shape == (1, 1, 2 * s, 2 * s)
    with pytest.raises(ShapeError, match="multiples of 8"):
        net(torch.zeros(1, 1, 60, 64))


def test_untrained_residual_model_is_identity(one_thread):
    net = Phaseformer(**TINY)
    x = torch.randn(2, 1, 32, 32)
    lo, hi = net(x)
    assert torch.equal(lo, x)
    assert torch.allclose(hi, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def test_phase_only_transform_and_eca():
    # seeded: the spectrum of a random image has, now and then, a coefficient within eps (1e-6) of zero, where
    # F/(|F| + eps) is not of unit modulus; the checks below say exactly what phase_only does there
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p = phase_only(x)
    assert p.shape == x.shape and p.dtype == x.dtype
    f = torch.fft.fft2(x, norm="ortho").to(torch.complex128)  # as phase_only computes it (float32)
    mag = torch.fft.fft2(p.double(), norm="ortho").abs()
    assert torch.allclose(mag, f.abs() / (f.abs() + 1e-6), atol=1e-4)  # |F| / (|F| + eps) everywhere
    good = f.abs() > 1e-2  # unit modulus wherever eps is negligible (almost every coefficient)
    assert good.double().mean() > 0.95 and torch.allclose(mag[good], torch.ones_like(mag[good]), atol=1e-4)
    f5 = torch.fft.fft2(phase_only(5 * x).double(), norm="ortho")  # amplitude scale removed:
    assert torch.allclose(f5[good], torch.fft.fft2(p.double(), norm="ortho")[good], atol=1e-4)
    assert not torch.allclose(p, x / x.std(), atol=0.1)  # the transform does something
    assert ECA(16).conv.kernel_size == (3,) and ECA(128).conv.kernel_size == (5,)


def test_charbonnier_gradient_msssim_hand_values():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]]]])
    target = torch.zeros_like(pred)
    expected = (2 * 1e-3 + math.sqrt(1 + 1e-6) + math.sqrt(4 + 1e-6)) / 4
    assert float(L.CharbonnierLoss()(pred, target)) == pytest.approx(expected, rel=1e-6)
    # Laplacian of a single bright pixel at the centre of a 3×3 image: −4 (valid convolution)
    spike = torch.zeros(1, 1, 3, 3)
    spike[0, 0, 1, 1] = 1.0
    assert L.laplacian(spike).shape == (1, 1, 1, 1) and float(L.laplacian(spike)) == -4.0
    assert float(L.GradientLoss()(spike, torch.zeros_like(spike))) == pytest.approx(4.0)
    assert float(L.GradientLoss()(spike + 7.0, spike)) == pytest.approx(0.0)  # offset-blind
    # constant images a and b (range 1): every contrast/structure term is 1, luminance at the coarsest
    # scale l = C1 / ((a − b)² + C1) after the shift by the target minimum → 1 − MS-SSIM = 1 − l^0.1333
    # (64 px: all scales even, so pytorch-msssim's zero-padded pooling does not touch the borders)
    a, b, c1 = 0.51, 0.5, (0.01 * 1.0) ** 2
    loss = L.MSSSIMLoss(data_range=1.0)(torch.full((1, 1, 64, 64), a), torch.full((1, 1, 64, 64), b))
    assert float(loss) == pytest.approx(1 - (c1 / ((a - b) ** 2 + c1)) ** 0.1333, rel=1e-4)
    img = torch.rand(1, 1, 64, 64)
    assert float(L.MSSSIMLoss()(img, img)) == pytest.approx(0.0, abs=1e-6)


def _vgg_file(tmp_path):
    from safetensors.torch import save_file

    state = {f"features.{k}": torch.randn_like(v) for k, v in L.PerceptualLoss()._net[0].state_dict().items()}
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    return tmp_path / "vgg16.safetensors"


def test_without_vgg_weights_the_perceptual_term_is_off_and_the_log_says_so(caplog):
    with caplog.at_level("WARNING", logger="phasestem"):
        crit = PhaseformerLoss()
    assert crit.components == ("charbonnier", "gradient", "ms_ssim") and "perceptual" not in crit.terms
    assert "perceptual term is OFF" in caplog.text
    with pytest.raises(ConfigError, match="only 'perceptual'"):
        PhaseformerLoss(("perceptual",))


def test_every_component_finite_and_nonzero_with_defaults(one_thread, tmp_path):
    torch.manual_seed(0)
    crit = PhaseformerLoss(perceptual_weights=_vgg_file(tmp_path))  # all four components
    assert crit.terms["perceptual"].source.endswith("vgg16.safetensors")
    net = Phaseformer(**TINY)
    x, y = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    out = crit(*net(x), y)
    for branch in ("L", "H"):
        for c in L.COMPONENTS:
            v = out[f"{branch}/{c}"]
            assert torch.isfinite(v) and float(v) > 0, (branch, c)
    assert torch.isfinite(out["loss"]) and float(out["loss"].detach()) > 0
    assert float(out["wL/charbonnier"]) == pytest.approx(0.25) and float(out["w_branch/H"]) == pytest.approx(0.5)
    # the perceptual network is frozen and not part of the state_dict / parameters
    assert [n for n, _ in crit.named_parameters()] == ["weight_l.logits", "weight_h.logits", "weight_branch.logits"]


def test_perceptual_weights_from_local_file_only(tmp_path):
    from safetensors.torch import save_file

    fallback = L.PerceptualLoss()
    net = fallback._net[0]
    state = {f"features.{k}": torch.randn_like(v) for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    local = L.PerceptualLoss(tmp_path / "vgg16.safetensors")
    assert local.source.endswith("vgg16.safetensors")
    assert torch.equal(local._net[0][0].weight, state["features.0.weight"])
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    assert float(local(x, y)) != pytest.approx(float(fallback(x, y)))
    with pytest.raises(InputFileError, match="not found"):
        L.PerceptualLoss(tmp_path / "missing.pth")
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(InputFileError, match="not VGG16"):
        L.PerceptualLoss(tmp_path / "partial.safetensors")


def test_learnable_loss_weights_reach_the_optimiser_and_change(tmp_path, one_thread):
    from phasestem.learn.trainer import Trainer, TrainerConfig
    from phasestem.learn.training.phaseformer import PhaseformerTrainable, phaseformer_loss_fn

    torch.manual_seed(0)
    model = PhaseformerTrainable(Phaseformer(**TINY), PhaseformerLoss(("charbonnier", "gradient", "ms_ssim")))
    before = {n: p.detach().clone() for n, p in model.criterion.named_parameters()}
    data = [{"input": torch.rand(2, 1, 48, 48), "target": torch.rand(2, 1, 48, 48)}]
    trainer = Trainer(model, phaseformer_loss_fn, data, config=TrainerConfig(
        epochs=1, device="cpu", progress=False, tensorboard=False, warmup_steps=0, lr=1e-2))
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.criterion.parameters())
    trainer.fit()
    for n, p in model.criterion.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n
    w = model.criterion.weight_l.weights()
    w = w.detach()
    assert float(w.sum()) == pytest.approx(1.0) and not torch.allclose(w, torch.full_like(w, 1 / 3))
    assert "train/wL/charbonnier" in trainer.history[-1] and "train/w_branch/H" in trainer.history[-1]


def test_bf16_autocast_step_is_finite(one_thread):
    from phasestem.learn.trainer import Trainer, TrainerConfig
    from phasestem.learn.training.phaseformer import PhaseformerTrainable, phaseformer_loss_fn, phaseformer_metrics_fn

    torch.manual_seed(0)
    model = PhaseformerTrainable(Phaseformer(**TINY), PhaseformerLoss(("charbonnier", "gradient", "ms_ssim")))
    data = [{"input": torch.rand(2, 1, 48, 48), "target": torch.rand(2, 1, 48, 48)}]
    trainer = Trainer(model, phaseformer_loss_fn, data, val_loader=data, metrics_fn=phaseformer_metrics_fn,
                      config=TrainerConfig(epochs=1, device="cpu", amp="bf16", progress=False, tensorboard=False))
    logs = trainer.fit()["history"][-1]
    assert all(math.isfinite(v) for v in logs.values())
    assert logs["val/psnr"] == pytest.approx(logs["val/psnr_identity"], abs=3.0)


def test_checkpoint_round_trip(tmp_path, one_thread):
    from phasestem.learn.apply.refine import load_phaseformer, refine_phase
    from phasestem.learn.trainer import save_weights
    from phasestem.learn.training.phaseformer import PhaseformerTrainable

    torch.manual_seed(0)
    net = Phaseformer(**TINY, residual=False).eval()
    wrapped = PhaseformerTrainable(net, PhaseformerLoss(("charbonnier",)))
    meta = {"network": "phaseformer", "model": net.config.model_dump(mode="json")}
    path = save_weights(wrapped.state_dict(), tmp_path / "run" / "best" / "model.safetensors", meta)
    loaded, _ = load_phaseformer(tmp_path / "run", device="cpu")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), loaded(x), strict=True))
    lo, hi = refine_phase(loaded, np.random.rand(20, 28).astype(np.float32), size=None)  # padded to 24×32
    assert lo.shape == (20, 28) and hi.shape == (40, 56)
    assert path.is_file()


def test_paired_sources_concatenate(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "set" / "train"
    (folder / "input").mkdir(parents=True)
    (folder / "gt").mkdir()
    for i in range(3):
        np.save(folder / "input" / f"p{i}.npy", rng.random((16, 16), dtype=np.float32))
        np.save(folder / "gt" / f"p{i}.npy", rng.random((32, 32), dtype=np.float32))  # input gets resized
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(folder / "input" / "q.png")
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(folder / "gt" / "q.png")
    write_pairs(tmp_path / "pairs.h5", rng.random((2, 32, 32)), rng.random((2, 32, 32)))
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        for i in range(2):
            f[f"phase_{i}"] = rng.random((32, 32)).astype(np.float32)
    ds = paired_dataset([tmp_path / "set", tmp_path / "pairs.h5", tmp_path / "sim.h5"], crop=24, augment=True)
    assert len(ds) == 4 + 2 + 2
    for i in range(len(ds)):
        item = ds[i]
        assert item["input"].shape == (1, 24, 24) and item["target"].shape == (1, 24, 24)
    png = paired_dataset([tmp_path / "set"], augment=False)[3]
    assert 0.0 <= float(png["target"].min()) and float(png["target"].max()) <= 1.0
    assert len(paired_dataset([str(tmp_path / "s*.h5")])) == 2  # glob patterns expand
    fixed = paired_dataset([tmp_path / "sim.h5"], fixed=True)
    assert torch.equal(fixed[0]["input"], fixed[0]["input"])  # fixed degradation per item
    with pytest.raises(InputFileError, match="input/' and 'gt/"):
        paired_dataset([tmp_path / "set" / "train" / "gt"])


def test_degrade_steps():
    from phasestem.learn.data import blob_phase

    rng = np.random.default_rng(0)
    phase = blob_phase(64, 0.5, rng)
    same = degrade(phase, Degrade(blur_sigma=(0, 0), bin_factors=[1], noise=(0, 0)), rng).numpy()
    np.testing.assert_allclose(same, phase, atol=1e-6)
    noisy = degrade(phase, Degrade(blur_sigma=(0, 0), bin_factors=[1], noise=(0.1, 0.1)), rng).numpy()
    assert np.std(noisy - phase) == pytest.approx(0.1 * phase.std(), rel=0.05)
    binned = degrade(phase, Degrade(blur_sigma=(0, 0), bin_factors=[4], noise=(0, 0)), rng).numpy()
    assert np.abs(binned.mean() - phase.mean()) < 1e-3 and 15 < metrics.psnr(binned, phase) < 60
    shifted = degrade(phase, Degrade(blur_sigma=(0, 0), bin_factors=[1], noise=(0, 0), offset=(0.3, 0.3)), rng)
    np.testing.assert_allclose(shifted.numpy() - phase, 0.3, atol=1e-5)


def test_cli_help_has_examples():
    from phasestem.cli import build_parser

    parser = build_parser()
    for argv in (["train", "phaseformer", "--help"], ["train", "autoencoder", "--help"], ["embed", "--help"],
                 ["refine", "--help"], ["make-pairs", "--help"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 0


def test_phaseformer_beats_identity_on_held_out_pairs(one_thread):
    from phasestem.learn.data import blob_phase

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    deg = Degrade(blur_sigma=(1.0, 1.5), bin_factors=[2], noise=(0.1, 0.1))

    def make(k):
        gt = np.stack([blob_phase(32, 0.5, rng, n_blobs=8) for _ in range(k)])
        inp = np.stack([degrade(g, deg, rng).numpy() for g in gt])
        return torch.from_numpy(inp)[:, None], torch.from_numpy(gt)[:, None]

    (x_train, y_train), (x_test, y_test) = make(64), make(16)
    net = Phaseformer(**TINY)
    crit = PhaseformerLoss(("charbonnier", "gradient"))
    opt = torch.optim.AdamW([*net.parameters(), *crit.parameters()], lr=2e-3, weight_decay=0.0)
    for _ in range(25):
        i = torch.randint(0, len(x_train), (8,))
        loss = crit(*net(x_train[i]), y_train[i])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        restored = float(metrics.psnr(net(x_test)[0], y_test))
    identity = float(metrics.psnr(x_test, y_test))
    assert restored > identity + 1.0, (identity, restored)
