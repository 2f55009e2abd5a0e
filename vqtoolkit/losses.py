"""Stage-1 losses: pixel + LPIPS reconstruction, codebook loss, PatchGAN with the adaptive weight.

Differences from the reference `VQLPIPSWithDiscriminator`, all deliberate:
- generator and discriminator losses are two methods that share one autoencoder forward;
- before `disc_start` the discriminator is not run at all (the reference runs it and multiplies by 0);
- the generator loss never backpropagates into the discriminator, so its gradient buffers stay clean
  even when both losses are backpropagated before either optimizer step; and one discriminator
  forward on the reconstruction can serve both losses (the reference runs it twice).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import mean_over_ranks
from .errors import VqtError
from .models.discriminator import NLayerDiscriminator
from .config import LossConfig

logger = logging.getLogger(__name__)

def vgg16_weights() -> tuple[str, str]:
    """(local path, download URL) of the ImageNet VGG16 weights that LPIPS asks torchvision for."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), url


def load_lpips(backbone: str = "vgg") -> nn.Module:
    """LPIPS (net "vgg") in eval mode with frozen weights; inputs in [-1, 1], output (B, 1, 1, 1).

    backbone "vgg" needs torchvision's ImageNet VGG16 file locally (never downloaded here: a missing
    file is an error that says where to put it). "random" uses a randomly initialised VGG with LPIPS's
    shipped linear layers: it runs anywhere but is not a perceptual metric (smoke tests only).
    """
    import lpips

    if backbone == "vgg":
        path, url = vgg16_weights()
        if not os.path.isfile(path):
            raise VqtError(
                f"the LPIPS perceptual loss needs torchvision's ImageNet VGG16 weights at {path}, and that "
                f"file is missing (vqt never downloads it). Download {url} on a machine with internet access "
                f"and copy it to that path (TORCH_HOME moves the directory), or train without the "
                f"perceptual loss: --set loss.perceptual_weight=0 "
                f"(or --set loss.perceptual_backbone=random, for smoke tests only)")
        pnet_rand = False
    elif backbone == "random":
        logger.warning("LPIPS uses a randomly initialised VGG (perceptual_backbone='random'): "
                       "reconstruction quality will suffer; use this for smoke tests only")
        pnet_rand = True
    else:
        raise VqtError(f"perceptual backbone {backbone!r} is unknown: expected 'vgg' or 'random'")
    with warnings.catch_warnings():
        # lpips calls torchvision with its deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net="vgg", pnet_rand=pnet_rand, verbose=False)
    return model.eval().requires_grad_(False)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


_D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


class LeCam(nn.Module):
    """LeCAM regulariser (Tseng et al. 2021, "Regularizing Generative Adversarial Networks under
    Limited Data"): keeps the discriminator's logits near EMAs of its own past mean logits,

        R = mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2),

    as the authors' code. It bounds how far apart real and fake logits drift, so the discriminator
    cannot become overconfident and hand the decoder large, artifact-making gradients. The EMAs are
    buffers (saved with the training state); they start at the first batch's means, which are taken
    over all ranks under torch.distributed so every rank keeps the same anchors.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        means = mean_over_ranks(torch.stack([logits_real.mean(), logits_fake.mean()]).float())
        if not self.initialized.item():
            self.ema_real.copy_(means[0])
            self.ema_fake.copy_(means[1])
            self.initialized.fill_(1)
        else:
            self.ema_real.lerp_(means[0], 1.0 - self.decay)
            self.ema_fake.lerp_(means[1], 1.0 - self.decay)

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """Update the EMAs with this batch, then the regulariser (a scalar)."""
        self.update(logits_real, logits_fake)
        return (F.relu(logits_real - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake).pow(2).mean())


def _pixel_loss(kind: str, inputs: Tensor, recon: Tensor) -> Tensor:
    """Mean L1 or L2 error; "bce": `recon` are logits of one-hot `inputs` (segmentation VQGANs)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(recon, inputs)
    diff = inputs - recon
    return (diff.abs() if kind == "l1" else diff.pow(2)).mean()


class VQLoss(nn.Module):
    """The VQGAN objective. `self.discriminator` is the PatchGAN; optimise and save it on its own.

    LPIPS (`self.perceptual`, absent when perceptual_weight is 0) stays in eval mode and frozen; it is a
    fixed metric, not something to train or checkpoint.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        if config.pixel_loss not in ("l1", "l2", "bce"):
            raise VqtError(f"loss.pixel_loss = {config.pixel_loss!r} is unknown: expected 'l1', 'l2' or 'bce'")
        if config.disc_loss not in _D_LOSSES:
            raise VqtError(f"loss.disc_loss = {config.disc_loss!r} is unknown: expected 'hinge' or 'vanilla'")
        self.pixel_loss = config.pixel_loss
        self.pixel_weight = config.pixel_weight
        self.perceptual_weight = config.perceptual_weight
        self.codebook_weight = config.codebook_weight
        self.disc_start = config.disc_start
        self.disc_weight = config.disc_weight
        self.disc_factor = config.disc_factor
        self.l2_weight = config.l2_weight
        self.lecam_weight = config.lecam_weight
        # present only when used, so training states without LeCAM keep their layout
        self.lecam = LeCam(config.lecam_decay) if config.lecam_weight > 0 else None
        self.d_loss = _D_LOSSES[config.disc_loss]
        self.perceptual = load_lpips(config.perceptual_backbone) if config.perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(config.disc_in_channels, config.disc_ndf, config.disc_layers,
                                                 config.disc_norm)

    def train(self, mode: bool = True) -> VQLoss:
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def discriminator_active(self, step: int) -> bool:
        """Whether the GAN terms are on at `step` (batches seen); before, skip the discriminator update."""
        return step >= self.disc_start

    def adaptive_weight(self, nll_grad: Tensor, g_grad: Tensor) -> Tensor:
        """lambda = |grad_last nll| / (|grad_last g| + 1e-4), clamped to [0, 1e4], detached, x disc_weight.

        Balances the GAN gradient against the reconstruction gradient at the decoder's last layer;
        takes both gradients with respect to that layer's weight.
        """
        weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + 1e-4)
        return torch.clamp(weight, 0.0, 1e4).detach() * self.disc_weight

    def generator_loss(self, inputs: Tensor, recon: Tensor, qloss: Tensor, last_layer: Tensor,
                       step: int, fake_logits: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Autoencoder loss: nll + lambda disc_factor g + codebook_weight qloss; images (B, C, H, W).

        `fake_logits`: the discriminator's logits for `recon`, when the caller computed them to reuse
        in `discriminator_loss` (the returned loss never backpropagates into the discriminator);
        without them the discriminator runs here, frozen. Under torch.distributed, once the
        discriminator is on and gradients are enabled, this is a collective (the adaptive weight's
        gradients are all-reduced): every rank must call it, in step.
        """
        pixel = _pixel_loss(self.pixel_loss, inputs.float(), recon.float())
        nll = self.pixel_weight * pixel
        if self.l2_weight > 0:  # beside the pixel loss: PSNR is a squared-error measure
            nll = nll + self.l2_weight * _pixel_loss("l2", inputs.float(), recon.float())
        p_loss = torch.zeros((), device=recon.device)
        if self.perceptual is not None:
            p_loss = self.perceptual(inputs.float(), recon.float()).mean()  # (B, 1, 1, 1) -> ()
            nll = nll + self.perceptual_weight * p_loss
        loss = nll + self.codebook_weight * qloss.mean()

        zero = torch.zeros((), device=recon.device)
        g_loss, d_weight, disc_factor = zero, zero, 0.0
        if self.discriminator_active(step):
            disc_factor = self.disc_factor
            if fake_logits is None:
                fake_logits = self._frozen_discriminator(recon)
            g_loss = -fake_logits.float().mean()
            if torch.is_grad_enabled() and g_loss.requires_grad and last_layer.requires_grad:
                # Backpropagate nll (through LPIPS) and g (through the discriminator) to `recon` once
                # each; their last-layer gradients then cost one pass through the last layer alone,
                # and the autoencoder's backward reuses them. The reference differentiates both
                # losses with respect to the last layer and then backpropagates everything again.
                nll_out, g_out = (torch.autograd.grad(term, recon, retain_graph=True)[0] for term in (nll, g_loss))
                nll_last, g_last = (torch.autograd.grad(recon, last_layer, out, retain_graph=True)[0]
                                    for out in (nll_out, g_out))
                # lambda from the global batch's gradients, as one process would compute it (the
                # reference takes each rank's own, so its training depends on the world size)
                nll_last, g_last = mean_over_ranks(torch.stack([nll_last, g_last]))
                d_weight = self.adaptive_weight(nll_last, g_last)
                recon_grad = (nll_out + d_weight * disc_factor * g_out).to(recon.dtype)
                # value: the full loss; gradient: exactly the full loss's gradient, routed via recon.
                routed = (recon * recon_grad).sum() + self.codebook_weight * qloss.mean()
                loss = (loss + d_weight * disc_factor * g_loss).detach() + routed - routed.detach()
            else:  # no graph (evaluation): lambda = 0, as the reference.
                loss = loss + d_weight * disc_factor * g_loss.detach()

        logs = {"total_loss": loss.detach(), "quant_loss": qloss.detach().mean(), "nll_loss": nll.detach(),
                "rec_loss": pixel.detach(), "p_loss": p_loss.detach(), "d_weight": d_weight.detach(),
                "disc_factor": torch.tensor(disc_factor), "g_loss": g_loss.detach()}
        return loss, logs

    def _frozen_discriminator(self, recon: Tensor) -> Tensor:
        """Logits for `recon` with the discriminator's parameters frozen: no gradient reaches them."""
        params = list(self.discriminator.parameters())
        saved = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            return self.discriminator(recon)
        finally:
            for p, flag in zip(params, saved):
                p.requires_grad_(flag)

    def discriminator_loss(self, inputs: Tensor, recon_detached: Tensor, step: int,
                           discriminator: nn.Module | None = None,
                           fake_logits: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """disc_factor x hinge/vanilla loss on real vs reconstructed; a constant 0 before disc_start.

        `discriminator` replaces `self.discriminator` for this call: the training loop passes its DDP
        wrapper. `fake_logits`, given, are the generator step's logits for the reconstruction (the
        discriminator has not changed since), so it is not run on it again; their graph also reaches
        the autoencoder, so backpropagate this loss with `inputs=` the discriminator's parameters.
        """
        zero = torch.zeros((), device=inputs.device)
        if not self.discriminator_active(step):
            return zero, {"disc_loss": zero, "logits_real": zero, "logits_fake": zero}
        disc = discriminator if discriminator is not None else self.discriminator
        logits_real = disc(inputs.detach()).float()
        logits_fake = (disc(recon_detached.detach()) if fake_logits is None else fake_logits).float()
        loss = self.d_loss(logits_real, logits_fake)
        logs = {}
        if self.lecam is not None:
            lecam = self.lecam(logits_real, logits_fake)
            loss = loss + self.lecam_weight * lecam
            logs["lecam_loss"] = lecam.detach()
        loss = self.disc_factor * loss
        return loss, {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean(), **logs}
