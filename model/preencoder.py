"""The pre-encoder: a mel autoencoder with a finite-scalar-quantisation (FSQ) bottleneck.

Echolancer predicts the pre-encoder's token ids; the pre-encoder turns them back into mel frames
for the vocoder. FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple")
replaces a learned codebook: the encoder emits ``len(levels)`` numbers per token, each is bounded
and rounded to one of ``L_i`` values, and the token id is the mixed-radix number of those digits.
No codebook collapse, no commitment loss, and the code is ~30 lines that TorchScript accepts.

Shapes (the exported module's contract, docs/DESIGN.md "Exported component formats"):
    encode(mel (B, T, C) float, mask (B, 1, T) bool True=pad or None) -> indices (B, T') long
    decode(indices (B, T') long, mask (B, 1, T') bool or None)       -> mel (B, T' * ds, C)
with ``T' = ceil(T / ds)`` and ``ds = downsample`` (1 by default: one token per mel frame).

Padding never changes codes: normalisation is per frame (fixed mean/std, LayerNorm over channels),
padded frames are zeroed before every convolution (exactly what a lone clip's zero padding sees),
and strided downsampling blocks never straddle two clips. So a clip's codes are the same batched
and alone (tested).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from utils.config.preencoder import PreEncoderGeneratorConfig

LOG_FLOOR = math.log(1.0e-5)  # utils.audio's silence level; decode writes it at padded frames


class FSQ(nn.Module):
    """Finite scalar quantisation.

    Per dimension with ``L`` levels: ``half = (L-1)(1+eps)/2``, ``offset = 0.5`` if ``L`` is even
    else 0, ``shift = atanh(offset/half)``; ``bounded = tanh(z + shift) * half - offset`` lies in
    an interval holding exactly ``L`` integers; rounding (straight-through gradient) picks one.
    ``index = sum((q + L//2) * basis)`` with ``basis = cumprod([1] + levels[:-1])``.

    Args:
        levels: number of levels per dimension, e.g. ``[8, 5, 5, 5]`` (1000 codes).
    """

    def __init__(self, levels: list[int], eps: float = 1.0e-3) -> None:
        super().__init__()
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.levels_list = list(levels)
        lv = torch.tensor(levels, dtype=torch.long)
        half = (lv.double() - 1.0) * (1.0 + eps) / 2.0
        offset = (1 - lv % 2).double() * 0.5
        # Derived constants are buffers (not persistent: they follow from ``levels``) so that
        # .to(device) moves them and TorchScript sees them as tensors.
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + list(levels[:-1])), 0), persistent=False)
        self.register_buffer("half_range", half.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half).float(), persistent=False)
        self.register_buffer("half_width", lv // 2, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """(..., dim) unbounded -> (..., dim) in an interval with exactly ``L`` integers per dim."""
        return torch.tanh(z + self.shift) * self.half_range - self.offset

    def quantize(self, z: Tensor) -> Tensor:
        """(..., dim) -> integer-valued (..., dim) in ``[-L//2, L - 1 - L//2]``, straight-through."""
        b = self.bound(z)
        return b + (torch.round(b) - b).detach()

    def codes_to_indices(self, q: Tensor) -> Tensor:
        """Integer-valued codes (..., dim) -> token ids (...) long in ``[0, codebook_size)``."""
        digits = torch.round(q).long() + self.half_width
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Token ids (...) -> integer-valued float codes (..., dim); inverse of :meth:`codes_to_indices`."""
        digits = torch.div(indices.long()[..., None], self.basis, rounding_mode="floor") % self.levels
        return (digits - self.half_width).float()

    def scale(self, q: Tensor) -> Tensor:
        """Integer codes -> roughly [-1, 1] (what the decoder consumes)."""
        return q / self.half_width.clamp(min=1).to(q.dtype)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(..., dim) -> (scaled codes (..., dim) with straight-through gradient, indices (...))."""
        q = self.quantize(z)
        return self.scale(q), self.codes_to_indices(q.detach())


class ConvBlock(nn.Module):
    """Pre-norm residual block: per-frame LayerNorm -> conv(k) -> GELU -> conv(1), masked.

    Args:
        hidden: channels.  kernel_size: odd width of the first convolution.  dropout: rate.
    """

    def __init__(self, hidden: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2)
        self.proj = nn.Conv1d(hidden, hidden, 1)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x: (B, T, H), keep: (B, T, 1) float (1 = valid frame) -> (B, T, H), zero at padding."""
        h = (self.norm(x) * keep).transpose(1, 2)  # zero padded frames before the convolution
        h = self.proj(self.act(self.conv(h))).transpose(1, 2)
        return (x + self.drop(h)) * keep


class PreEncoder(nn.Module):
    """Mel (B, T, C) <-> FSQ token ids (B, T').

    Args:
        mel_channels: C, the number of mel bins.
        cfg: ``model.generator`` of ``config/preencoder.yaml``.
    """

    def __init__(self, mel_channels: int, cfg: PreEncoderGeneratorConfig) -> None:
        super().__init__()
        H, ds = cfg.hidden, cfg.downsample
        self.mel_channels = mel_channels
        self.downsample = ds
        self.fsq_levels = list(cfg.fsq_levels)
        self.codebook_size = math.prod(cfg.fsq_levels)
        self.mel_mean = float(cfg.mel_mean)
        self.mel_std = float(cfg.mel_std)
        self.log_floor = LOG_FLOOR

        self.enc_in = nn.Linear(mel_channels, H)
        self.enc_blocks = nn.ModuleList(ConvBlock(H, cfg.kernel_size, cfg.dropout) for _ in range(cfg.encoder_blocks))
        # Downsampling: non-overlapping blocks of ``ds`` frames (kernel = stride), so a token sees
        # frames of one clip only; identity for ds = 1.
        self.down = nn.Conv1d(H, H, ds, stride=ds) if ds > 1 else nn.Identity()
        self.enc_norm = nn.LayerNorm(H)
        self.to_code = nn.Linear(H, len(cfg.fsq_levels))
        self.fsq = FSQ(cfg.fsq_levels)

        self.from_code = nn.Linear(len(cfg.fsq_levels), H)
        self.up = nn.ConvTranspose1d(H, H, ds, stride=ds) if ds > 1 else nn.Identity()
        self.dec_blocks = nn.ModuleList(ConvBlock(H, cfg.kernel_size, cfg.dropout) for _ in range(cfg.decoder_blocks))
        self.dec_norm = nn.LayerNorm(H)
        self.dec_out = nn.Linear(H, mel_channels)

    @classmethod
    def from_config(cls, cfg) -> PreEncoder:
        """Build from ``load_config("config/preencoder.yaml", schema=PreEncoderConfig)``."""
        return cls(cfg.model.mel_channels, cfg.model.generator)

    # ---- masks ----------------------------------------------------------------------------------

    def token_mask(self, mask: Tensor) -> Tensor:
        """Frame padding (B, 1, T) -> token padding (B, 1, ceil(T / ds)); a token is padding only
        if all of its frames are."""
        if self.downsample == 1:
            return mask
        B, _, T = mask.shape
        extra = (-T) % self.downsample
        m = torch.nn.functional.pad(mask, (0, extra), value=True)
        return m.reshape(B, 1, -1, self.downsample).all(-1)

    # ---- the two halves -------------------------------------------------------------------------

    def encode_latent(self, mel: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """mel (B, T, C), mask (B, 1, T) or None -> pre-quantisation latent (B, T', dim), token pad (B, T')."""
        B, T, C = mel.shape
        if mask is None:
            mask = torch.zeros(B, 1, T, dtype=torch.bool, device=mel.device)
        extra = (-T) % self.downsample
        keep = (~mask).transpose(1, 2).to(mel.dtype)  # (B, T, 1)
        x = (mel - self.mel_mean) / self.mel_std * keep
        if extra > 0:
            x = torch.nn.functional.pad(x, (0, 0, 0, extra))
            keep = torch.nn.functional.pad(keep, (0, 0, 0, extra))
        x = self.enc_in(x) * keep
        for block in self.enc_blocks:
            x = block(x, keep)
        x = self.down(x.transpose(1, 2)).transpose(1, 2)  # (B, T', H)
        tok_pad = self.token_mask(mask)[:, 0]  # (B, T')
        z = self.to_code(self.enc_norm(x))
        return z, tok_pad

    def decode_codes(self, codes: Tensor, tok_pad: Tensor) -> Tensor:
        """Scaled codes (B, T', dim), token pad (B, T') -> mel (B, T' * ds, C), LOG_FLOOR at padding."""
        keep_tok = (~tok_pad)[..., None].to(codes.dtype)
        x = self.from_code(codes) * keep_tok
        x = self.up(x.transpose(1, 2)).transpose(1, 2)  # (B, T' * ds, H)
        keep = keep_tok.repeat_interleave(self.downsample, dim=1)
        x = x * keep
        for block in self.dec_blocks:
            x = block(x, keep)
        mel = self.dec_out(self.dec_norm(x)) * self.mel_std + self.mel_mean
        return mel.masked_fill(keep == 0, self.log_floor)

    # ---- the exported contract --------------------------------------------------------------------

    @torch.jit.export
    def encode(self, mel: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """mel (B, T, C) float, mask (B, 1, T) bool True=pad or None -> indices (B, ceil(T/ds)) long,
        0 at padded tokens."""
        z, tok_pad = self.encode_latent(mel, mask)
        _, idx = self.fsq(z)
        return idx.masked_fill(tok_pad, 0)

    @torch.jit.export
    def decode(self, indices: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """indices (B, T') long, mask (B, 1, T') bool True=pad or None -> mel (B, T' * ds, C)."""
        if mask is None:
            tok_pad = torch.zeros(indices.shape, dtype=torch.bool, device=indices.device)
        else:
            tok_pad = mask[:, 0]
        codes = self.fsq.scale(self.fsq.indices_to_codes(indices.masked_fill(tok_pad, 0)))
        return self.decode_codes(codes, tok_pad)

    def forward(self, mel: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Training pass. mel (B, T, C), mask (B, 1, T) -> reconstruction (B, T, C), indices (B, T')."""
        z, tok_pad = self.encode_latent(mel, mask)
        codes, idx = self.fsq(z)
        recon = self.decode_codes(codes, tok_pad)[:, : mel.shape[1]]
        return recon, idx.masked_fill(tok_pad, 0)


def reconstruction_loss(
    pred: Tensor, target: Tensor, mask: Optional[Tensor], l1_weight: float = 1.0, l2_weight: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Masked L1 and L2 mel reconstruction losses, averaged over valid frames and channels.

    Args:
        pred, target: (B, T, C).  mask: (B, 1, T) True = padded frame, or None.
    Returns:
        (weighted total, l1, l2), each a scalar.
    """
    diff = pred - target
    if mask is None:
        keep = torch.ones_like(diff[..., :1])
    else:
        keep = (~mask).transpose(1, 2).to(diff.dtype)  # (B, T, 1)
    denom = keep.sum().clamp(min=1.0) * diff.shape[-1]
    l1 = (diff.abs() * keep).sum() / denom
    l2 = (diff.pow(2) * keep).sum() / denom
    return l1_weight * l1 + l2_weight * l2, l1, l2


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, 1, max_len) bool, True at padded positions (the pre-encoder's layout)."""
    return (torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None])[:, None, :]
