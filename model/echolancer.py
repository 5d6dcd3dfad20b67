"""Echolancer: a non-autoregressive text encoder and an autoregressive audio-token decoder.

Token layout of the decoder (defined once, in ``utils.config.ModelSection``; saved with every
checkpoint):
    [0, codebook_size)   codec tokens
    bos_id = codebook_size, eos_id = codebook_size + 1, pad_id = codebook_size + 2

Teacher forcing frames raw codec tokens here and nowhere else:
    inputs  = BOS t0 t1 ... t(L-1) PAD ...      (B, T + 1)
    targets = t0  t1 ...  t(L-1) EOS PAD ...     (B, T + 1)
so position j predicts token j for j < L and position L predicts EOS.

Conditioning: a vector made of the emotion embedding (BERT sentence vector -> emotion_channels)
and, for multi-speaker models, a speaker vector (an embedding table and/or a reference-utterance
encoder in ``vq_token_mode``) is projected to each stack's width and *added* to every input
position. Nothing overwrites embedding channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from model.layers import (
    CodeFactors,
    DecoderLayer,
    EncoderLayer,
    KVCache,
    NormalizedEmbedding,
    alibi_bias,
    alibi_slopes,
    compute_dtype,
    flex_cross_attention_mask,
    flex_self_attention_mask,
    padding_mask,
    self_attention_mask,
    sinusoidal_positions,
)
from model.tracking import AlignSpec, AlignState, TrackingParams, mean_attention
from utils.config import ModelConfig, ModelSection

# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class EcholancerOutput:
    """Teacher-forcing output.

    logits: (B, T + 1, n_vocab).  stop_logits: (B, T + 1) or None (no stop head).
    targets: (B, T + 1) audio tokens, EOS at each row's length, PAD after.
    tgt_pad: (B, T + 1) True where the target is PAD.  src_pad: (B, S) True at padded text.
    stop_targets: (B, T + 1) bool, True where the target is EOS.
    cross_weights: each decoder layer's own cross-attention (B, H, T + 1, S), when asked for
        (``forward(..., return_cross_weights=True)``), else None.
    text_logits: (B, T + 1, vocab_size + 1) the text-recognition head's logits (blank last), for
        models with ``decoder.text_ctc_weight`` > 0 (:func:`model.loss.text_ctc_loss`), else None.
    """

    logits: Tensor
    stop_logits: Optional[Tensor]
    targets: Tensor
    tgt_pad: Tensor
    src_pad: Tensor
    stop_targets: Tensor
    cross_weights: Optional[list[Tensor]] = None
    text_logits: Optional[Tensor] = None


@dataclass
class EncoderState:
    """What the decoder needs from the encoder: memory (B, S, De), src_pad (B, S), cond (B, Dc)."""

    memory: Tensor
    src_pad: Tensor
    cond: Tensor


@dataclass
class DecodeState:
    """Per-utterance state of incremental decoding: KV caches, cross K/V computed once, masks."""

    caches: list[KVCache]
    cross_kv: list[tuple[Tensor, Tensor]]
    cross_mask: Tensor  # (B, 1, 1, S) bool, True = valid text
    cond: Tensor  # (B, 1, Dd) decoder conditioning
    max_len: int
    # What the decode does with its cross-attention (a monotonic window, alignment tracking, or
    # recording each step's peak) and the per-row position it keeps; None = nothing.
    align: Optional[AlignState] = None


# --------------------------------------------------------------------------------------------
# Sub-modules
# --------------------------------------------------------------------------------------------


class EmotionEncoder(nn.Module):
    """BERT sentence vector (B, emotion_input_size) -> emotion vector (B, emotion_channels)."""

    def __init__(self, input_size: int, hidden_sizes: list[int], out_size: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_size
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, out_size))
        self.net = nn.Sequential(*layers)

    def forward(self, em: Tensor) -> Tensor:
        return self.net(em)


class TransformerStack(nn.Module):
    """A stack of encoder layers over embedded tokens, with a final LayerNorm.

    Used for the text encoder and the reference-utterance encoder.

    Position: without ALiBi, sinusoidal absolute positions are added to the input. With ALiBi,
    ``position`` says what else gives the stack direction and place (a symmetric |i−j| bias alone
    cannot tell a sequence from its mirror image):
        directional           per-head left/right ALiBi (relative, extrapolates in length)
        absolute              symmetric ALiBi plus sinusoidal absolute positions
        directional_absolute  both

    ``backend`` "flex" runs the same attention through FlexAttention (``model/layers.py``).
    """

    def __init__(self, dim: int, heads: int, kv_heads: int, layers: int, expansion: int,
                 activation: str, dropout: float, use_alibi: bool, alibi_alpha: float,
                 position: str = "directional", backend: str = "sdpa") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, kv_heads, expansion, activation, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.use_alibi = use_alibi
        self.position = position
        self.backend = backend
        self.register_buffer("slopes", alibi_slopes(heads, alibi_alpha), persistent=False)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x: (B, S, D) embedded tokens, pad: (B, S) -> (B, S, D), zero at padded positions."""
        B, S, D = x.shape
        if not self.use_alibi or "absolute" in self.position:
            x = x + sinusoidal_positions(torch.arange(S, device=x.device), D).to(x.dtype)
        slopes = self.slopes if self.use_alibi else None
        directional = self.position.startswith("directional")
        if self.backend == "flex":
            mask = flex_self_attention_mask(pad, S, False, slopes, directional, device=x.device)
        else:
            mask, _ = self_attention_mask(pad, S, False, slopes, compute_dtype(x), directional=directional)
        for layer in self.layers:
            x = layer(x, mask, pad)
        return self.norm(x).masked_fill(pad[..., None], 0.0)


class ReferenceEncoder(nn.Module):
    """``vq_token_mode``: a reference utterance's codec tokens (B, R) -> speaker vector (B, out)."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int, expansion: int,
                 activation: str, dropout: float, out_size: int, use_alibi: bool, alibi_alpha: float,
                 position: str, backend: str = "sdpa") -> None:
        super().__init__()
        self.embed = NormalizedEmbedding(vocab, dim)
        self.stack = TransformerStack(dim, heads, heads, layers, expansion, activation, dropout, use_alibi,
                                      alibi_alpha, position, backend)
        self.out = nn.Linear(dim, out_size)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        pad = padding_mask(lengths, tokens.shape[1])
        h = self.stack(self.embed(tokens.masked_fill(pad, 0)), pad)  # (B, R, D), zero at pads
        pooled = h.sum(1) / lengths.clamp(min=1)[:, None].to(h.dtype)  # masked mean
        return self.out(pooled)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Echolancer(nn.Module):
    """Text -> audio codec tokens.

    Args:
        cfg: the ``model`` section of the model config (see ``config/model.yaml``).
    """

    def __init__(self, cfg: ModelSection) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebook_size = cfg.codebook_size
        self.bos_id, self.eos_id, self.pad_id = cfg.bos_id, cfg.eos_id, cfg.pad_id
        self.n_vocab = cfg.n_audio_vocab
        enc, dec = cfg.encoder, cfg.decoder
        self.use_alibi = cfg.use_alibi
        # Full-sequence forwards (training, validation) run SDPA or FlexAttention; the one-step
        # decode with the KV cache always runs SDPA.
        self.attention_backend = cfg.attention_backend

        # Conditioning: emotion always, a speaker vector for multi-speaker / vq_token_mode models.
        self.emotion_encoder = EmotionEncoder(
            cfg.emotion_input_size, cfg.emotion_hidden_sizes, cfg.emotion_channels, enc.dropout
        )
        self.speaker_embed = nn.Embedding(cfg.n_speaker, cfg.speaker_channels) if cfg.multi_speaker else None
        self.ref_encoder = None
        if cfg.vq_token_mode:
            r = cfg.ref_encoder
            self.ref_encoder = ReferenceEncoder(
                cfg.vq_vocab_size, r.hidden, r.head, r.layer, r.forward_expansion, cfg.activation,
                r.dropout, cfg.speaker_channels, cfg.use_alibi, cfg.alibi_alpha, cfg.encoder_position,
                cfg.attention_backend,
            )
        has_speaker = cfg.multi_speaker or cfg.vq_token_mode
        cond_dim = cfg.emotion_channels + (cfg.speaker_channels if has_speaker else 0)
        self.enc_cond = nn.Linear(cond_dim, enc.hidden)
        self.dec_cond = nn.Linear(cond_dim, dec.hidden)

        # Text encoder.
        self.text_embed = NormalizedEmbedding(cfg.vocab_size, enc.hidden)
        self.encoder = TransformerStack(
            enc.hidden, enc.head, cfg.encoder_kv_heads, enc.layer, enc.forward_expansion,
            cfg.activation, enc.dropout, cfg.use_alibi, cfg.alibi_alpha, cfg.encoder_position,
            cfg.attention_backend,
        )

        # Autoregressive decoder.
        self.audio_embed = NormalizedEmbedding(self.n_vocab, dec.hidden)
        self.dec_layers = nn.ModuleList(
            DecoderLayer(dec.hidden, enc.hidden, dec.head, cfg.decoder_kv_heads, dec.forward_expansion,
                         cfg.activation, dec.dropout)
            for _ in range(dec.layer)
        )
        self.dec_norm = nn.LayerNorm(dec.hidden)
        self.token_dropout = dec.token_dropout  # teacher forcing only, see hide_tokens
        self.head = nn.Linear(dec.hidden, self.n_vocab)
        # Codec tokens on one FSQ digit share part of their embedding and head vectors (or None).
        self.code_factors = CodeFactors(cfg.code_levels, dec.hidden, self.n_vocab) if cfg.code_levels else None
        self.stop_head = nn.Linear(dec.hidden, 1) if cfg.stop_head else None
        # Training only: reads the text back from the decoder states (CTC, blank = vocab_size).
        self.text_ctc_head = nn.Linear(dec.hidden, cfg.vocab_size + 1) if dec.text_ctc_weight > 0 else None
        self.register_buffer("dec_slopes", alibi_slopes(dec.head, cfg.alibi_alpha), persistent=False)
        # Default (min, max) audio tokens per text token for :meth:`infer`; set by training and by
        # ``model.pretrained.load_echolancer`` from the model config's ``generation`` section and the
        # training data's statistics (``model.generation_defaults``). None = unbounded.
        self.length_bounds: tuple[Optional[float], Optional[float]] = (None, None)
        # Default monotonic attention window of :meth:`infer` (``generation.attention_window``), set
        # the same way. None = the decoder attends to all of the text.
        self.attention_window: Optional[tuple[int, int]] = None
        # Default alignment tracking of :meth:`infer` (``generation.tracking``, with thresholds from
        # the training data), set like the length bounds. None = off.
        self.tracking: Optional[TrackingParams] = None
        self.length_stats: Optional[dict] = None  # the training data's ratios those defaults came from
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @classmethod
    def from_config(cls, cfg: ModelConfig | ModelSection) -> Echolancer:
        """Build from ``load_config("config/model.yaml")`` (or its ``model`` section)."""
        return cls(cfg.model if isinstance(cfg, ModelConfig) else cfg)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- conditioning and encoder ------------------------------------------------------------

    def condition(
        self,
        speakers: Optional[Tensor],
        em_hidden: Optional[Tensor],
        batch_size: int,
        device: torch.device,
        vq_tokens: Optional[Tensor] = None,
        vq_token_lens: Optional[Tensor] = None,
    ) -> Tensor:
        """The conditioning vector (B, cond_dim): emotion, then the speaker vector if any.

        ``em_hidden=None`` means "no emotion" and uses the zero sentence vector, the same default
        the dataset uses for files without an ``emotion`` key.
        """
        dtype = self.enc_cond.weight.dtype  # a model cast with .half()/.to(bf16) gets inputs to match
        if em_hidden is None:
            em_hidden = torch.zeros(batch_size, self.cfg.emotion_input_size, device=device, dtype=dtype)
        if em_hidden.shape != (batch_size, self.cfg.emotion_input_size):
            raise ValueError(
                f"em_hidden must be (B, emotion_input_size) = ({batch_size}, {self.cfg.emotion_input_size}), "
                f"got {tuple(em_hidden.shape)}"
            )
        parts = [self.emotion_encoder(em_hidden.to(dtype))]
        if self.speaker_embed is not None or self.ref_encoder is not None:
            spk = torch.zeros(batch_size, self.cfg.speaker_channels, device=device, dtype=dtype)
            if self.speaker_embed is not None:
                if speakers is None:
                    raise ValueError("this model is multi-speaker: pass speaker ids (B,)")
                speakers = speakers.reshape(-1).long()
                out_of_range = (speakers < 0).any() | (speakers >= self.cfg.n_speaker).any()
                if speakers.numel() != batch_size or (speakers.device.type == "cpu" and bool(out_of_range)):
                    raise ValueError(
                        f"speaker ids must be {batch_size} values in [0, {self.cfg.n_speaker}); got {speakers.tolist()}"
                    )
                if speakers.device.type != "cpu":
                    # Checked on the device: reading the flag back would stall every forward (the
                    # datasets and the pipeline already validate ids on the host).
                    torch._assert_async(~out_of_range, f"speaker ids must be in [0, {self.cfg.n_speaker})")
                spk = spk + self.speaker_embed(speakers)
            if self.ref_encoder is not None:
                if vq_tokens is None or vq_token_lens is None:
                    raise ValueError("vq_token_mode: pass the reference utterance as vq_tokens and vq_token_lens")
                spk = spk + self.ref_encoder(vq_tokens, vq_token_lens)
            parts.append(spk)
        return torch.cat(parts, dim=-1)

    def encode(
        self,
        speakers: Optional[Tensor],
        texts: Tensor,
        src_lens: Tensor,
        em_hidden: Optional[Tensor] = None,
        vq_tokens: Optional[Tensor] = None,
        vq_token_lens: Optional[Tensor] = None,
    ) -> EncoderState:
        """Run the text encoder once.

        Args:
            speakers: (B,) speaker ids (multi-speaker models) or None.
            texts: (B, S) text token ids, any value after each row's length.
            src_lens: (B,) text lengths.  em_hidden: (B, emotion_input_size) or None.
            vq_tokens, vq_token_lens: reference utterance (B, R) and lengths (vq_token_mode).
        """
        B, S = texts.shape
        src_pad = padding_mask(src_lens, S)
        cond = self.condition(speakers, em_hidden, B, texts.device, vq_tokens, vq_token_lens)
        x = self.text_embed(texts.masked_fill(src_pad, 0)) + self.enc_cond(cond)[:, None, :]
        return EncoderState(self.encoder(x, src_pad), src_pad, cond)

    # ---- teacher forcing ---------------------------------------------------------------------

    def frame(self, mels: Tensor, mel_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw codec tokens (B, T) -> decoder inputs, targets and target padding, each (B, T + 1)."""
        B, T = mels.shape
        tgt_pad = padding_mask(mel_lens + 1, T + 1)  # L tokens + EOS are valid targets
        body = mels.masked_fill(padding_mask(mel_lens, T), self.pad_id)
        bos = torch.full((B, 1), self.bos_id, dtype=mels.dtype, device=mels.device)
        pad = torch.full((B, 1), self.pad_id, dtype=mels.dtype, device=mels.device)
        inputs = torch.cat([bos, body], dim=1)
        targets = torch.cat([body, pad], dim=1)
        targets = targets.scatter(1, mel_lens[:, None].long(), self.eos_id)
        return inputs, targets, tgt_pad

    def hide_tokens(self, inputs: Tensor) -> Tensor:
        """Replace a random ``token_dropout`` share of the audio inputs (never BOS) by ``pad_id``.

        ``pad_id`` never reaches a valid position otherwise (padding is masked out of every
        attention), so its embedding is free to mean "unknown audio". Draws from torch's global
        RNG, which checkpoints save, so a resumed run hides the same tokens.

        Args:
            inputs: (B, T) framed decoder inputs, BOS first.
        Returns:
            (B, T) the inputs with the hidden positions set to ``pad_id``.
        """
        hide = torch.rand(inputs.shape, device=inputs.device) < self.token_dropout
        hide[:, 0] = False
        return inputs.masked_fill(hide, self.pad_id)

    def decode(
        self,
        inputs: Tensor,
        enc: EncoderState,
        tgt_pad: Optional[Tensor] = None,
        cross_bias: Optional[Tensor] = None,
        cross_weights: Optional[list[Tensor]] = None,
        steer: Optional[Tensor] = None,
    ) -> Tensor:
        """Decoder over a whole (framed) sequence, no cache.

        Args:
            inputs: (B, T) decoder input ids starting with BOS.  tgt_pad: (B, T) or None.
            cross_bias: (B, T, S) float added to every cross-attention score (an alignment
                prior, see ``model/alignment.py``), or None.
            cross_weights: if a list, each layer's own cross-attention probabilities (B, H, T, S),
                without ``cross_bias``, are appended to it (computed explicitly, differentiable: for
                pictures and the guided alignment loss; this forward then runs SDPA whatever the
                backend).
            steer: inference-time steering of each step's cross-attention (``model/tracking.py``):
                (B, T, S) bool, the text each step may attend to (the monotonic window), or float,
                a prior added to the scores (alignment tracking; −inf at padded text); or None.
                Unlike ``cross_bias`` it is part of the decoder's own attention, so the
                ``cross_weights`` include it.
        Returns:
            (B, T, Dd) final hidden states.
        """
        B, T = inputs.shape
        x = self.embed_audio(inputs) + self.dec_cond(enc.cond)[:, None, :]
        if not self.use_alibi:
            x = x + sinusoidal_positions(torch.arange(T, device=x.device), x.shape[-1]).to(x.dtype)
        if self.attention_backend == "flex" and cross_weights is None and steer is None:
            slopes = self.dec_slopes if self.use_alibi else None
            self_flex = flex_self_attention_mask(None, T, True, slopes, device=x.device)
            cross_flex = flex_cross_attention_mask(enc.src_pad, cross_bias)
            for layer in self.dec_layers:
                x = layer(x, self_flex, False, cross_flex, tgt_pad, memory=enc.memory)
            return self.dec_norm(x)
        self_mask, is_causal = self_attention_mask(
            tgt_pad, T, True, self.dec_slopes if self.use_alibi else None, compute_dtype(x)
        )
        own_mask = (~enc.src_pad)[:, None, None, :]  # (B, 1, 1, S) bool
        if steer is not None and steer.dtype == torch.bool:
            own_mask = own_mask & steer[:, None]  # (B, 1, T, S)
        elif steer is not None:
            own_mask = steer[:, None].to(compute_dtype(x)).masked_fill(~own_mask, float("-inf"))
        cross_mask = own_mask
        if cross_bias is not None:  # the training prior: in the scores, not in the model's own weights
            bias = cross_bias[:, None].to(compute_dtype(x))
            cross_mask = (bias.masked_fill(~own_mask, float("-inf")) if own_mask.dtype == torch.bool
                          else own_mask + bias)
        for layer in self.dec_layers:
            x = layer(x, self_mask, is_causal, cross_mask, tgt_pad, memory=enc.memory,
                      cross_weights=cross_weights, weights_mask=own_mask)
        return self.dec_norm(x)

    def embed_audio(self, ids: Tensor) -> Tensor:
        """Decoder input ids (B, T) -> (B, T, Dd) token vectors."""
        return self.audio_embed(ids) if self.code_factors is None else self.code_factors.embed(self.audio_embed, ids)

    def project(self, h: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Hidden states (..., Dd) -> token logits (..., n_vocab) and stop logits (...) or None."""
        stop = self.stop_head(h).squeeze(-1) if self.stop_head is not None else None
        logits = self.head(h)
        if self.code_factors is not None:
            logits = self.code_factors.add_logits(logits, h)
        return logits, stop

    def forward(
        self,
        speakers: Optional[Tensor],
        texts: Tensor,
        src_lens: Tensor,
        mels: Tensor,
        mel_lens: Tensor,
        em_hidden: Optional[Tensor] = None,
        vq_tokens: Optional[Tensor] = None,
        vq_token_lens: Optional[Tensor] = None,
        cross_bias: Optional[Tensor] = None,
        return_cross_weights: bool = False,
    ) -> EcholancerOutput:
        """Teacher forcing.

        Args:
            speakers: (B,) ids or None.  texts: (B, S).  src_lens: (B,).
            mels: (B, T) raw codec tokens in [0, codebook_size), padded (with ``pad_id``).
            mel_lens: (B,) audio lengths.  em_hidden: (B, emotion_input_size) or None.
            vq_tokens, vq_token_lens: reference utterance for ``vq_token_mode``.
            cross_bias: (B, T + 1, S) alignment prior added to cross-attention scores, or None
                (:func:`model.alignment.alignment_prior`).
            return_cross_weights: also return each layer's own cross-attention probabilities, for
                the guided alignment loss (:func:`model.alignment.guided_attention_loss`).
        """
        enc = self.encode(speakers, texts, src_lens, em_hidden, vq_tokens, vq_token_lens)
        inputs, targets, tgt_pad = self.frame(mels, mel_lens)
        if self.training and self.token_dropout > 0:
            inputs = self.hide_tokens(inputs)
        weights: Optional[list[Tensor]] = [] if return_cross_weights else None
        h = self.decode(inputs, enc, tgt_pad, cross_bias, cross_weights=weights)
        logits, stop = self.project(h)
        text_logits = self.text_ctc_head(h) if self.text_ctc_head is not None else None
        return EcholancerOutput(logits, stop, targets, tgt_pad, enc.src_pad, targets == self.eos_id, weights,
                                text_logits)

    # ---- incremental decoding (used by model/generation.py) ----------------------------------

    def init_decode_state(self, enc: EncoderState, max_len: int, dtype: Optional[torch.dtype] = None,
                          align: Optional[AlignSpec] = None) -> DecodeState:
        """Allocate KV caches for ``max_len`` decoder positions and compute cross K/V once.

        ``align``: what to do with each step's cross-attention (``model/tracking.py``), or None.
        """
        B = enc.memory.shape[0]
        dev = enc.memory.device
        dtype = dtype or enc.memory.dtype
        caches = []
        for layer in self.dec_layers:
            a = layer.self_attn
            caches.append(KVCache(B, a.n_kv_heads, max_len, a.head_dim, dtype, dev))
        cross_kv, cross_mask, cond = self.decode_memory(enc)
        state = None
        if align is not None and align.active:
            state = AlignState(align, B, dev).load((~enc.src_pad).sum(dim=1))
        return DecodeState(caches, cross_kv, cross_mask, cond, max_len, state)

    def decode_memory(self, enc: EncoderState) -> tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]:
        """What one-step decoding reads from the encoder: per-layer cross K/V (B, KVH, S, hd) each,
        the cross mask (B, 1, 1, S) bool (True = valid text) and the decoder conditioning (B, 1, Dd)."""
        cross_kv = [layer.cross_attn.project_kv(enc.memory) for layer in self.dec_layers]
        return cross_kv, (~enc.src_pad)[:, None, None, :], self.dec_cond(enc.cond)[:, None, :]

    def decode_step(self, tokens: Tensor, input_pos: Tensor, state: DecodeState) -> tuple[Tensor, Optional[Tensor]]:
        """One decoder step with the KV cache; static shapes, so it can be compiled/graph-captured.

        Args:
            tokens: (B, 1) the token at position ``input_pos``.  input_pos: (1,) long.
        Returns:
            logits (B, n_vocab) for the next token, stop logits (B,) or None.
        """
        x = self.embed_audio(tokens) + state.cond
        if not self.use_alibi:
            x = x + sinusoidal_positions(input_pos, x.shape[-1]).to(x.dtype)
        k_pos = torch.arange(state.max_len, device=tokens.device)
        future = k_pos[None, :] > input_pos[:, None]  # (1, Tmax): unwritten cache slots
        if self.use_alibi:
            bias = alibi_bias(self.dec_slopes, input_pos, k_pos, causal=True)  # (H, 1, Tmax)
            mask = bias.to(compute_dtype(x)).masked_fill(future, float("-inf"))[None]
        else:
            mask = (~future)[None, None]  # (1, 1, 1, Tmax) bool
        cross_mask, weights = state.cross_mask, None
        if state.align is not None:  # steered around where the attention has got to
            cross_mask = state.align.step_mask(cross_mask, compute_dtype(x))
            weights = []
        for layer, cache, kv in zip(self.dec_layers, state.caches, state.cross_kv):
            x = layer(x, mask, False, cross_mask, None, memory_kv=kv, cache=cache, input_pos=input_pos,
                      cross_weights=weights)
        if weights is not None:  # in place: a captured graph keeps reading the same buffers
            state.align.update(mean_attention(weights))
        logits, stop = self.project(self.dec_norm(x)[:, -1])
        return logits, stop

    def infer(self, speakers, texts, src_lens, em_hidden=None, **kwargs):
        """Generate codec tokens; see :func:`model.generation.generate` for the arguments.

        Unless given, ``min/max_tokens_per_text_token`` default to :attr:`length_bounds`,
        ``attention_window`` to :attr:`attention_window` and ``tracking`` to :attr:`tracking`.
        A ``params`` object (:class:`model.sampling.SamplingParams`) is taken as it is: it already
        says all of them.
        """
        from model.generation import generate

        return generate(self, speakers, texts, src_lens, em_hidden=em_hidden, **self.with_generation_defaults(kwargs))

    def with_generation_defaults(self, kwargs: dict) -> dict:
        """``kwargs`` for :func:`model.generation.generate` with this model's defaults filled in
        (see :meth:`infer`; the streaming decode takes the same)."""
        kwargs = dict(kwargs)
        if "params" not in kwargs:
            kwargs.setdefault("min_tokens_per_text_token", self.length_bounds[0])
            kwargs.setdefault("max_tokens_per_text_token", self.length_bounds[1])
            kwargs.setdefault("attention_window", self.attention_window)
            kwargs.setdefault("tracking", self.tracking)
        return kwargs
