"""iSTFTNet vocoder (Kaneko et al. 2022, "C8C8I"): generator, discriminators and GAN losses.

The generator is HiFi-GAN V1's upsampling stack (Kong et al. 2020) stopped after two x8 stages; a
final convolution predicts, for each of the T*64 frames, the log-magnitude and the phase of a tiny
STFT (n_fft 16, hop 4) that an inverse STFT turns into T*256 samples:

    mel (B, n_mels, T) -> conv_pre -> [leaky ReLU -> ConvTranspose x8 -> mean of ResBlocks] x 2
        -> leaky ReLU -> reflection pad (1, 0) -> conv_post -> (B, n_fft + 2, T*64 + 1)
        -> magnitude = exp(first n_fft/2+1 channels), phase = sin(the rest)
        -> torch.istft(magnitude * e^(i*phase), n_fft 16, hop 4, win 16, centred) -> (B, T*256)

The one-sample reflection pad makes T*64 + 1 STFT frames, and a centred inverse STFT of F frames
gives hop*(F-1) samples, hence exactly T*256. The generator's ``forward`` stops at
(magnitude, phase): that is what the exported TorchScript files hold (``istftnetfe.py``), so the
export is compatible with the original iSTFTNet exports; :class:`ISTFT` does the last step.

Training (``train_vocoder.py``) is HiFi-GAN's: multi-period (periods 2, 3, 5, 7, 11) and
multi-scale discriminators, least-squares GAN losses, feature matching x2 and mel L1 x45.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from utils.config.vocoder import DiscriminatorConfig, GeneratorConfig

LRELU_SLOPE = 0.1

# (B, T) features of every discriminator layer, and the final logits, per sub-discriminator.
FeatureMaps = list[list[Tensor]]


def _padding(kernel: int, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel with dilation."""
    return (kernel * dilation - dilation) // 2


def _init_weights(module: nn.Module, std: float = 0.01) -> None:
    # HiFi-GAN initialises generator convolutions from N(0, 0.01): with the default (Kaiming)
    # init the exp() magnitude head starts with huge values and the first steps diverge.
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            m.weight.data.normal_(0.0, std)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: per dilation, two leaky-ReLU + conv pairs inside a residual.

    Args:
        channels: C; input and output are (B, C, L).
        kernel_size: odd kernel of every convolution.
        dilations: the first convolution of each pair uses these dilations; the second uses 1.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ISTFTNetGenerator(nn.Module):
    """mel (B, n_mels, T) -> (magnitude, phase), each (B, n_fft/2 + 1, T*prod(upsample_rates) + 1).

    Args:
        cfg: the generator section of the vocoder config.
        n_mels: input mel channels (``audio.n_mels``).
    """

    def __init__(self, cfg: GeneratorConfig, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.n_fft = cfg.gen_istft_n_fft
        self.hop_size = cfg.gen_istft_hop_size
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            # padding (k - u) / 2 makes the output exactly u times longer than the input.
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)))
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(c_out, rk, rd))
        c_last = ch // 2 ** len(cfg.upsample_rates)
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        self.conv_post = weight_norm(nn.Conv1d(c_last, self.n_fft + 2, 7, padding=3))
        _init_weights(self.ups)
        _init_weights(self.conv_post)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Args: mel (B, n_mels, T) log-mel. Returns magnitude, phase: (B, n_fft/2+1, T*64+1) float32."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = F.leaky_relu(x)  # default slope 0.01 here, as in HiFi-GAN
        x = self.conv_post(self.reflection_pad(x)).float()  # exp() in half precision overflows
        n_bins = self.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :n_bins, :])
        phase = torch.sin(x[:, n_bins:, :])
        return magnitude, phase

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights, in place (before tracing: faster, no parametrization).

        Not on a ``copy.deepcopy`` of a generator: parametrized modules share their generated class
        with the copy, and removal would strip it from the original too. Use :meth:`folded_copy`.
        """
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)

    def folded_copy(self) -> ISTFTNetGenerator:
        """A new generator with the same weights and weight norm folded in (this one is untouched)."""
        param = next(self.parameters())
        copy = ISTFTNetGenerator(self.cfg, self.n_mels).to(param.device)
        copy.load_state_dict(self.state_dict())
        copy.remove_weight_norm()
        return copy.train(self.training)


class ISTFT(nn.Module):
    """The generator's last step: (magnitude, phase) -> waveform with ``torch.istft``.

    The phase head outputs sin(x), used directly as an angle in radians (as the original iSTFTNet
    does); exported generators depend on that convention.

    Args:
        n_fft, hop_length, win_length: the small STFT (16, 4, 16 for C8C8I); Hann window.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: Optional[int] = None) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def forward(self, magnitude: Tensor, phase: Tensor) -> Tensor:
        """Args: magnitude, phase (B, n_fft/2+1, F). Returns (B, hop*(F-1)) float32 waveform."""
        spec = torch.polar(magnitude.float(), phase.float())
        return torch.istft(
            spec, self.n_fft, self.hop_length, self.win_length,
            window=self.window.to(spec.device), center=True,
        )


# --------------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------------


def _scaled(channels: list[int], width: float) -> list[int]:
    return [max(4, int(round(c * width))) for c in channels]


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A discriminator's body: leaky-ReLU convolutions, then the output conv.

    Returns the flattened logits (B, L) and every layer's output (for feature matching).
    """
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1), fmap


class PeriodDiscriminator(nn.Module):
    """Looks at every ``period``-th sample: the waveform folded to (B, 1, N/p, p), 2-D convolutions.

    Args:
        period: folding period.  width: channel multiplier (1.0 = HiFi-GAN's 32..1024).
    """

    def __init__(self, period: int, width: float = 1.0) -> None:
        super().__init__()
        self.period = period
        chs = [1] + _scaled([32, 128, 512, 1024, 1024], width)
        strides = [3, 3, 3, 3, 1]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chs[i], chs[i + 1], (5, 1), (strides[i], 1), padding=(2, 0))) for i in range(5)
        )
        self.conv_post = weight_norm(nn.Conv2d(chs[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Args: wav (B, 1, N). Returns logits (B, L) and the feature map of every layer."""
        b, c, n = wav.shape
        if n % self.period:
            # Reflect-pad to a whole number of periods; reflect needs pad < n, always true here.
            wav = F.pad(wav, (0, self.period - n % self.period), mode="reflect")
        return _conv_stack(self.convs, self.conv_post, wav.view(b, c, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN's scale discriminator: strided grouped 1-D convolutions over the raw waveform.

    Args:
        use_spectral_norm: spectral norm instead of weight norm (HiFi-GAN does so on the raw scale).
        width: channel multiplier (1.0 = 128..1024).
    """

    def __init__(self, use_spectral_norm: bool = False, width: float = 1.0) -> None:
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        chs = [1] + _scaled([128, 128, 256, 512, 1024, 1024, 1024], width)
        # (kernel, stride, groups) per layer; groups shrink with width so they divide the channels.
        layout = [(15, 1, 1), (41, 2, 4), (41, 2, 16), (41, 4, 16), (41, 4, 16), (41, 1, 16), (5, 1, 1)]
        self.convs = nn.ModuleList()
        for i, (k, s, g) in enumerate(layout):
            groups = math.gcd(g, math.gcd(chs[i], chs[i + 1]))
            self.convs.append(norm(nn.Conv1d(chs[i], chs[i + 1], k, s, groups=groups, padding=(k - 1) // 2)))
        self.conv_post = norm(nn.Conv1d(chs[-1], 1, 3, padding=1))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Args: wav (B, 1, N). Returns logits (B, L) and the feature map of every layer."""
        return _conv_stack(self.convs, self.conv_post, wav)


class Discriminators(nn.Module):
    """All sub-discriminators (MPD + MSD) behind one call, so training treats them as one model.

    Args:
        cfg: the discriminator section of the vocoder config.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, cfg.width) for p in cfg.periods)
        self.msd = nn.ModuleList(
            ScaleDiscriminator(use_spectral_norm=(i == 0), width=cfg.width) for i in range(cfg.msd_scales)
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav: Tensor) -> tuple[list[Tensor], FeatureMaps]:
        """Args: wav (B, 1, N) or (B, N). Returns per-sub-discriminator logits and feature maps."""
        if wav.dim() == 2:
            wav = wav[:, None]
        logits, fmaps = [], []
        for d in self.mpd:
            out, fm = d(wav)
            logits.append(out)
            fmaps.append(fm)
        x = wav
        for i, d in enumerate(self.msd):
            if i > 0:
                x = self.pool(x)  # each further scale sees the waveform average-pooled x2 more
            out, fm = d(x)
            logits.append(out)
            fmaps.append(fm)
        return logits, fmaps


# --------------------------------------------------------------------------------------------
# Losses (least-squares GAN, feature matching, mel L1)
# --------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """LSGAN: push D(real) to 1 and D(fake) to 0, summed over sub-discriminators."""
    loss = real_logits[0].new_zeros((), dtype=torch.float32)
    for dr, dg in zip(real_logits, fake_logits):
        loss = loss + torch.mean((1.0 - dr.float()) ** 2) + torch.mean(dg.float() ** 2)
    return loss


def generator_adversarial_loss(fake_logits: list[Tensor]) -> Tensor:
    """LSGAN: push D(fake) to 1, summed over sub-discriminators."""
    loss = fake_logits[0].new_zeros((), dtype=torch.float32)
    for dg in fake_logits:
        loss = loss + torch.mean((1.0 - dg.float()) ** 2)
    return loss


def feature_matching_loss(real_fmaps: FeatureMaps, fake_fmaps: FeatureMaps) -> Tensor:
    """Sum over sub-discriminators and layers of mean |D_l(real) - D_l(fake)| (real detached)."""
    loss = real_fmaps[0][0].new_zeros((), dtype=torch.float32)
    for fr_d, fg_d in zip(real_fmaps, fake_fmaps):
        for fr, fg in zip(fr_d, fg_d):
            loss = loss + torch.mean(torch.abs(fr.detach().float() - fg.float()))
    return loss
