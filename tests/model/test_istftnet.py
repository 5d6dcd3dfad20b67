"""iSTFTNet generator, inverse STFT, discriminators and GAN losses (model/istftnet.py)."""

import pytest
import torch

from model.istftnet import (
    ISTFT,
    Discriminators,
    ISTFTNetGenerator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from utils.config.vocoder import DiscriminatorConfig, GeneratorConfig


def tiny_generator(seed: int = 0) -> ISTFTNetGenerator:
    torch.manual_seed(seed)
    return ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=32), n_mels=80).eval()


@pytest.mark.parametrize("frames", [1, 2, 5, 23])
def test_waveform_is_exactly_frames_times_256_samples(frames):
    gen, istft = tiny_generator(), ISTFT(16, 4)
    with torch.no_grad():
        magnitude, phase = gen(torch.randn(2, 80, frames))
        wav = istft(magnitude, phase)
    # T*64 upsampled frames + 1 from the reflection pad; centred iSTFT gives hop * (F - 1) samples.
    assert magnitude.shape == phase.shape == (2, 9, frames * 64 + 1)
    assert wav.shape == (2, frames * 256)


def test_heads_are_positive_magnitude_and_bounded_phase():
    with torch.no_grad():
        magnitude, phase = tiny_generator()(3.0 * torch.randn(1, 80, 8))
    assert magnitude.dtype == torch.float32
    assert (magnitude > 0).all()  # exp()
    assert phase.abs().max() <= 1.0  # sin()


def test_istft_inverts_a_real_stft_with_phase_in_radians():
    # The exported generators rely on this convention: spectrum = magnitude * e^(i * phase).
    torch.manual_seed(0)
    wav = torch.randn(2, 400)
    window = torch.hann_window(16)
    spec = torch.stft(wav, 16, 4, 16, window=window, center=True, return_complex=True)
    out = ISTFT(16, 4)(spec.abs(), spec.angle())
    assert torch.allclose(out, wav[:, : out.shape[-1]], atol=1e-5)
    assert out.shape[-1] == 4 * (spec.shape[-1] - 1)


def test_gradients_reach_the_generator_through_the_istft():
    gen, istft = tiny_generator(), ISTFT(16, 4)
    gen.train()
    istft(*gen(torch.randn(1, 80, 4))).pow(2).mean().backward()
    assert gen.conv_pre.parametrizations.weight.original1.grad.abs().sum() > 0


def test_removing_weight_norm_keeps_the_output():
    gen = tiny_generator()
    mel = torch.randn(1, 80, 6)
    with torch.no_grad():
        before = gen(mel)
        gen.remove_weight_norm()
        after = gen(mel)
    assert not hasattr(gen.conv_pre, "parametrizations")
    for a, b in zip(before, after):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_discriminators_cover_every_period_and_scale_and_any_length():
    torch.manual_seed(0)
    disc = Discriminators(DiscriminatorConfig(periods=[2, 3, 5], msd_scales=2, width=0.0625))
    logits, fmaps = disc(torch.randn(2, 1, 1001))  # 1001 is a multiple of none of the periods
    assert len(logits) == len(fmaps) == 3 + 2
    assert all(lg.shape[0] == 2 and torch.isfinite(lg).all() for lg in logits)
    # Period discriminators fold the (padded) waveform to (B, C, N/p, p): the last axis is the period.
    assert [fm[0].shape[-1] for fm in fmaps[:3]] == [2, 3, 5]


def test_lsgan_losses_are_zero_at_their_targets_and_positive_elsewhere():
    ones, zeros = [torch.ones(2, 7), torch.ones(2, 3)], [torch.zeros(2, 7), torch.zeros(2, 3)]
    assert discriminator_loss(ones, zeros).item() == 0.0
    assert generator_adversarial_loss(ones).item() == 0.0
    # D(real) = 0, D(fake) = 1 is the worst case: (1-0)^2 + 1^2 per sub-discriminator.
    assert discriminator_loss(zeros, ones).item() == pytest.approx(4.0)
    assert generator_adversarial_loss(zeros).item() == pytest.approx(2.0)


def test_feature_matching_is_mean_abs_difference_and_does_not_train_on_real_maps():
    real = [[torch.zeros(2, 4, requires_grad=True), torch.zeros(3, requires_grad=True)]]
    fake = [[torch.full((2, 4), 0.5, requires_grad=True), torch.full((3,), 2.0, requires_grad=True)]]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(0.5 + 2.0)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None
