import logging
import math

import pytest
import torch
import torch.nn.functional as F

from vqtoolkit.errors import VqtError
from vqtoolkit.losses import VQLoss, hinge_d_loss, load_lpips, vanilla_d_loss
from vqtoolkit.recipes import LossConfig


def tiny_loss(**kwargs) -> VQLoss:
    options = dict(perceptual_weight=0.0, disc_start=0, disc_layers=1, disc_ndf=8)
    return VQLoss(LossConfig(**{**options, **kwargs}))


class TinyDecoder(torch.nn.Module):
    """recon = 1x1 conv of a fixed feature map: `conv.weight` plays the decoder's last layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.randn(2, 4, 16, 16)
        self.conv = torch.nn.Conv2d(4, 3, 1)

    def forward(self) -> torch.Tensor:
        return self.conv(self.features)


def test_adaptive_weight_matches_hand_computation():
    torch.manual_seed(1)
    loss_fn, decoder = tiny_loss(disc_weight=0.8, disc_factor=0.5, codebook_weight=2.0), TinyDecoder()
    inputs, qloss = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor(0.3)
    recon = decoder()
    loss, logs = loss_fn.generator_loss(inputs, recon, qloss, decoder.conv.weight, step=0)

    nll = (inputs - recon).abs().mean()
    g = -loss_fn.discriminator(recon).mean()  # ActNorm was initialised by the call above
    nll_grad = torch.autograd.grad(nll, decoder.conv.weight, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g, decoder.conv.weight, retain_graph=True)[0]
    weight = min(max(nll_grad.norm().item() / (g_grad.norm().item() + 1e-4), 0.0), 1e4) * 0.8
    assert logs["d_weight"].item() == pytest.approx(weight, rel=1e-5)
    assert logs["g_loss"].item() == pytest.approx(g.item(), rel=1e-5)
    assert loss.item() == pytest.approx(nll.item() + weight * 0.5 * g.item() + 2.0 * 0.3, rel=1e-5)


def test_routed_gradient_equals_the_full_losss_gradient():
    """The loss backpropagates through recon once; its gradient must be that of the plain sum."""
    torch.manual_seed(2)
    loss_fn, decoder = tiny_loss(disc_weight=0.8, disc_factor=0.5, codebook_weight=2.0), TinyDecoder()
    decoder.features = torch.nn.Parameter(decoder.features)  # a layer below the last one
    inputs, code = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor(0.7, requires_grad=True)
    params = [decoder.features, decoder.conv.weight, decoder.conv.bias, code]
    loss, logs = loss_fn.generator_loss(inputs, decoder(), code ** 2, decoder.conv.weight, step=0)
    routed = torch.autograd.grad(loss, params)

    recon = decoder()
    plain = ((inputs - recon).abs().mean() + logs["d_weight"] * 0.5 * -loss_fn.discriminator(recon).mean()
             + 2.0 * code ** 2)
    for got, want in zip(routed, torch.autograd.grad(plain, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_discriminator_gets_no_gradient_from_generator_step():
    loss_fn, decoder = tiny_loss(), TinyDecoder()
    loss, _ = loss_fn.generator_loss(torch.zeros(2, 3, 16, 16), decoder(), torch.tensor(0.0),
                                     decoder.conv.weight, step=0)
    loss.backward()
    assert decoder.conv.weight.grad is not None
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    assert all(p.requires_grad for p in loss_fn.discriminator.parameters())


def test_shared_fake_logits_give_the_same_losses_and_gradients():
    torch.manual_seed(3)
    loss_fn, decoder = tiny_loss(disc_weight=0.8), TinyDecoder()
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    params = [decoder.conv.weight, *loss_fn.discriminator.parameters()]

    def step(shared: bool) -> tuple:
        for p in params:
            p.grad = None
        recon = decoder()
        fake = loss_fn.discriminator(recon) if shared else None
        g, g_logs = loss_fn.generator_loss(inputs, recon, torch.tensor(0.0), decoder.conv.weight, 0, fake)
        g.backward()
        d, _ = loss_fn.discriminator_loss(inputs, recon.detach(), 0, fake_logits=fake)
        d.backward(inputs=list(loss_fn.discriminator.parameters()))
        return g.item(), g_logs["d_weight"].item(), d.item(), [p.grad.clone() for p in params]

    separate, shared = step(False), step(True)  # ActNorm initialised itself in the first
    assert shared[:3] == pytest.approx(separate[:3], rel=1e-6)
    for got, want in zip(shared[3], separate[3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_disc_start_gates_discriminator():
    loss_fn, decoder = tiny_loss(disc_start=5), TinyDecoder()
    calls = []
    loss_fn.discriminator.register_forward_hook(lambda *args: calls.append(1))
    inputs, recon = torch.zeros(2, 3, 16, 16), decoder()
    loss, logs = loss_fn.generator_loss(inputs, recon, torch.tensor(0.0), decoder.conv.weight, step=4)
    d_loss, _ = loss_fn.discriminator_loss(inputs, recon.detach(), step=4)
    assert calls == [] and not loss_fn.discriminator_active(4)
    assert logs["g_loss"].item() == 0 and logs["d_weight"].item() == 0 and d_loss.item() == 0
    assert loss.item() == pytest.approx(recon.abs().mean().item())
    loss_fn.generator_loss(inputs, recon, torch.tensor(0.0), decoder.conv.weight, step=5)
    loss_fn.discriminator_loss(inputs, recon.detach(), step=5)
    assert len(calls) == 3 and loss_fn.discriminator_active(5)


def test_no_graph_gives_zero_adaptive_weight():
    loss_fn, decoder = tiny_loss(), TinyDecoder()
    with torch.no_grad():
        recon = decoder()
        _, logs = loss_fn.generator_loss(torch.zeros_like(recon), recon, torch.tensor(0.0),
                                         decoder.conv.weight, step=0)
    assert logs["d_weight"].item() == 0


def test_gan_loss_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = 0.5 * ((softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.5)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["hinge", "vanilla"])
def test_discriminator_loss_uses_logits_of_real_and_fake(kind):
    loss_fn = tiny_loss(disc_loss=kind, disc_factor=0.5)
    loss_fn.discriminator = torch.nn.Identity()  # logits = pixels
    real, fake = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 0.5)
    loss, logs = loss_fn.discriminator_loss(real, fake, step=0)
    expected = (hinge_d_loss if kind == "hinge" else vanilla_d_loss)(real, fake) * 0.5
    assert loss.item() == pytest.approx(expected.item())
    assert logs["logits_real"].item() == 2.0 and logs["logits_fake"].item() == 0.5


def test_l2_pixel_loss():
    loss_fn = tiny_loss(pixel_loss="l2", pixel_weight=2.0, disc_start=10)
    x, y = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    loss, logs = loss_fn.generator_loss(x, y, torch.tensor(0.0), torch.zeros(1), step=0)
    assert logs["rec_loss"].item() == 0.25 and loss.item() == 0.5


def test_missing_vgg_weights_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(VqtError) as info:
        VQLoss(LossConfig(perceptual_weight=1.0))
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "loss.perceptual_weight=0" in message and "loss.perceptual_backbone=random" in message
    assert VQLoss(LossConfig(perceptual_weight=0.0)).perceptual is None  # no LPIPS, no weights needed


def test_unknown_options_are_errors():
    with pytest.raises(VqtError, match="'hinge' or 'vanilla'"):
        tiny_loss(disc_loss="wgan")
    with pytest.raises(VqtError, match="'l1', 'l2' or 'bce'"):
        tiny_loss(pixel_loss="huber")
    with pytest.raises(VqtError, match="'vgg' or 'random'"):
        load_lpips("alex")


def test_random_backbone_warns_and_stays_frozen_in_eval(caplog):
    with caplog.at_level(logging.WARNING, logger="vqtoolkit.losses"):
        loss_fn = tiny_loss(perceptual_weight=1.0, perceptual_backbone="random", disc_start=10)
    assert "smoke tests only" in caplog.text
    loss_fn.train()
    assert not loss_fn.perceptual.training and loss_fn.discriminator.training
    assert not any(p.requires_grad for p in loss_fn.perceptual.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    recon = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    loss, logs = loss_fn.generator_loss(x, recon, torch.tensor(0.0), torch.zeros(1), step=0)
    loss.backward()
    assert logs["p_loss"].item() > 0 and recon.grad is not None
    expected = F.l1_loss(recon, x).item() + logs["p_loss"].item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_patchgan_layout_and_actnorm_init():
    from vqtoolkit.models.discriminator import NLayerDiscriminator

    with torch.device("meta"):  # parameter counts of the reference (use_actnorm True / False)
        assert sum(p.numel() for p in NLayerDiscriminator(norm="actnorm").parameters()) == 2_766_529
        batchnorm = NLayerDiscriminator(norm="batchnorm")
        assert sum(p.numel() for p in batchnorm.parameters()) == 2_765_633
    assert {"main.0.bias", "main.2.weight", "main.3.running_mean", "main.11.weight"} <= set(
        batchnorm.state_dict())
    assert "main.2.bias" not in batchnorm.state_dict()  # no conv bias before a batch norm
    torch.manual_seed(0)
    disc, x = NLayerDiscriminator(in_channels=3, ndf=8, n_layers=3), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before_norm = disc.main[:3](x)  # (B, 16, 16, 16)
    assert disc(x).shape == (2, 1, 6, 6)  # (256 px at ndf 64 -> 30x30 patches)
    # The first training batch initialised ActNorm to zero-mean, unit-std activations per channel.
    normed = disc.main[3](before_norm).transpose(0, 1).flatten(1)  # (C, N)
    assert disc.main[3].initialized.item() == 1
    torch.testing.assert_close(normed.mean(1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(1), torch.ones(16), atol=1e-4, rtol=0)
    with pytest.raises(VqtError, match="'actnorm' or 'batchnorm'"):
        tiny_loss(disc_norm="layernorm")


def test_l2_weight_adds_a_squared_error_beside_l1():
    loss_fn = tiny_loss(pixel_weight=1.0, l2_weight=3.0, disc_start=10)
    x, y = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    loss, logs = loss_fn.generator_loss(x, y, torch.tensor(0.0), torch.zeros(1), step=0)
    assert logs["rec_loss"].item() == 0.5  # the L1 term alone
    assert logs["nll_loss"].item() == pytest.approx(0.5 + 3.0 * 0.25) and loss.item() == pytest.approx(1.25)


def test_lecam_regulariser_by_hand():
    from vqtoolkit.losses import LeCam

    lecam = LeCam(decay=0.9)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    # the first batch sets the anchors: ema_real = 2, ema_fake = -1
    assert lecam(real, fake).item() == pytest.approx((2.0**2 + 4.0**2) / 2 + (4.0**2 + 2.0**2) / 2)
    assert (lecam.ema_real.item(), lecam.ema_fake.item()) == (2.0, -1.0)
    lecam(torch.tensor([4.0]), torch.tensor([1.0]))  # then EMAs: 0.9 old + 0.1 new
    assert lecam.ema_real.item() == pytest.approx(2.2) and lecam.ema_fake.item() == pytest.approx(-0.8)
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake", "initialized"}


def test_lecam_weight_joins_the_discriminator_loss():
    loss_fn = tiny_loss(lecam_weight=0.5, disc_factor=2.0)
    plain = tiny_loss(disc_factor=2.0)
    assert plain.lecam is None and "lecam" not in dict(plain.named_children())
    for fn in (loss_fn, plain):
        fn.discriminator = torch.nn.Identity()  # logits = pixels
    real, fake = torch.tensor([[1.0, 3.0]]), torch.tensor([[-2.0, 0.0]])
    loss, logs = loss_fn.discriminator_loss(real, fake, step=0)
    base, base_logs = plain.discriminator_loss(real, fake, step=0)
    assert logs["lecam_loss"].item() == pytest.approx(20.0) and "lecam_loss" not in base_logs
    assert loss.item() == pytest.approx(base.item() + 2.0 * 0.5 * 20.0)
