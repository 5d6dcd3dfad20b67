"""Export the whole chain as TorchScript for deployment, checked against the eager chain.

    written = export_chain(synth, "deploy/", max_length=1000)     # synth: a pipeline.Synthesizer

The directory (read back by :class:`model.deploy.DeployedChain`, with torch alone):

    encoder.pt             (texts (1, S) long, src_lens (1,) long, em_hidden (1, E) float, speakers (1,) long)
                           -> cross_k, cross_v (L, 1, KVH, S, hd), cross_valid (1, S) bool, cond (1, 1, D)
    decode_step.pt         (tokens (1, 1) long, input_pos (1,) long, k_cache, v_cache (L, 1, KVH, T_max, hd),
                            cross_k, cross_v, cross_valid, cond)
                           -> logits (1, V), stop (1,) (zeros without a stop head), k_cache, v_cache
                           (the caches are written in place at input_pos and returned)
    preencoder_decoder.pt  (indices (1, T) long, lengths (1,) long) -> mel (1, T * downsample, C)
    vocoder.pt             (mel (1, C, F) float) -> wav (1, F * hop)
    deploy.yaml            shapes, special tokens, tokenizer, audio and length settings, the streaming
                           reach, and what the check measured

Every module is saved, loaded back and compared with the eager chain on probe inputs; one that
differs by more than 1e-5 (plus 1e-5 relative) is an :class:`ExportMismatch` and the directory
is not written. Files are written to a temporary directory beside the target and moved in only
after every check passed; a file the user already had is never removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from typing import Optional

import torch
import yaml
from torch import Tensor, nn

from model.echolancer import DecodeState, Echolancer
from model.istftnet_artifact import quiet_jit
from model.stream_audio import measure_reach

FORMAT = "echolancer-deploy"
FORMAT_VERSION = 1
FILES = {"encoder": "encoder.pt", "decode_step": "decode_step.pt",
         "preencoder_decoder": "preencoder_decoder.pt", "vocoder": "vocoder.pt"}
CONFIG_NAME = "deploy.yaml"
ATOL = RTOL = 1e-5


class DeployError(ValueError):
    """The chain or the output directory cannot be exported as asked (bad input: exit status 2)."""


class ExportMismatch(RuntimeError):
    """An exported module disagrees with the eager chain (the export is refused: exit status 1)."""


# --------------------------------------------------------------------------------------------
# The exported modules
# --------------------------------------------------------------------------------------------


class _TensorCache:
    """One layer's slice of the explicit cache tensors, in the shape ``KVCache`` has (duck-typed:
    ``MultiHeadAttention`` only calls ``update``). Writes go into the caller's tensors."""

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class EncoderModule(nn.Module):
    """The text encoder and everything one-step decoding reads from it (see the module docstring)."""

    def __init__(self, model: Echolancer) -> None:
        super().__init__()
        self.model = model
        self.multi_speaker = model.speaker_embed is not None

    def forward(self, texts: Tensor, src_lens: Tensor, em_hidden: Tensor,
                speakers: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        enc = self.model.encode(speakers if self.multi_speaker else None, texts, src_lens, em_hidden)
        cross_kv, _, cond = self.model.decode_memory(enc)
        cross_k = torch.stack([k for k, _ in cross_kv])
        cross_v = torch.stack([v for _, v in cross_kv])
        return cross_k, cross_v, ~enc.src_pad, cond


class DecodeStepModule(nn.Module):
    """``Echolancer.decode_step`` with its KV caches as explicit tensors (see the module docstring)."""

    def __init__(self, model: Echolancer, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.max_length = max_length
        self.n_layers = len(model.dec_layers)

    def forward(self, tokens: Tensor, input_pos: Tensor, k_cache: Tensor, v_cache: Tensor, cross_k: Tensor,
                cross_v: Tensor, cross_valid: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        caches = [_TensorCache(k_cache[i], v_cache[i]) for i in range(self.n_layers)]
        cross = [(cross_k[i], cross_v[i]) for i in range(self.n_layers)]
        state = DecodeState(caches, cross, cross_valid[:, None, None, :], cond, self.max_length)  # type: ignore[arg-type]
        logits, stop = self.model.decode_step(tokens, input_pos, state)
        if stop is None:  # one signature for every model: deploy.yaml says whether it means anything
            stop = torch.zeros_like(logits[:, 0])
        return logits, stop, k_cache, v_cache


class PreEncoderDecoderModule(nn.Module):
    """The pre-encoder's ``decode`` with lengths instead of a mask."""

    def __init__(self, pre: nn.Module) -> None:
        super().__init__()
        self.pre = pre

    def forward(self, indices: Tensor, lengths: Tensor) -> Tensor:
        mask = (torch.arange(indices.shape[1], device=indices.device)[None, :] >= lengths[:, None])[:, None, :]
        return self.pre.decode(indices.masked_fill(mask[:, 0], 0), mask)


class VocoderModule(nn.Module):
    """The ISTFTNet generator and its inverse STFT in one module: mel (B, C, F) -> wav (B, F * hop)."""

    def __init__(self, gen: nn.Module, n_fft: int, hop_length: int, win_length: int, window: Tensor) -> None:
        super().__init__()
        self.gen = gen
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", window.detach().clone().float())

    def forward(self, mel: Tensor) -> Tensor:
        magnitude, phase = self.gen(mel.float())
        spec = torch.polar(magnitude.float(), phase.float())
        return torch.istft(spec, self.n_fft, self.hop_length, self.win_length, window=self.window, center=True)


def build_modules(synth, max_length: int) -> dict[str, torch.jit.ScriptModule]:
    """The four TorchScript modules of a CPU ``pipeline.Synthesizer`` (traced or scripted).

    Args:
        synth: with an Echolancer, a pre-encoder and an ISTFTNet vocoder, all on the CPU.
        max_length: decoder positions the KV cache holds (the longest utterance, in tokens).
    """
    model = synth.model
    ex = _probe_inputs(synth, text_len=11, seed=0)
    with torch.no_grad(), quiet_jit(), warnings.catch_warnings():
        # The tracer warns where Echolancer.condition checks its inputs (shapes, speaker range) in
        # Python: those checks become constants of the trace. The deployed chain checks the same
        # inputs in Python before calling it, and the export check below compares the results.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        encoder = torch.jit.trace(EncoderModule(model), ex, check_trace=False)
        ck, cv, valid, cond = encoder(*ex)
        kc, vc = _empty_caches(model, max_length)
        step_ex = (torch.full((1, 1), model.bos_id), torch.zeros(1, dtype=torch.long), kc, vc, ck, cv, valid, cond)
        step = torch.jit.trace(DecodeStepModule(model, max_length), step_ex, check_trace=False)
        pre = torch.jit.script(PreEncoderDecoderModule(synth.pre_encoder.module))
        stft = synth.vocoder.stft
        vocoder = torch.jit.script(VocoderModule(synth.vocoder.gen, stft.n_fft, stft.hop_length, stft.win_length,
                                                 stft.window))
    return {"encoder": encoder, "decode_step": step, "preencoder_decoder": pre, "vocoder": vocoder}


def _probe_inputs(synth, text_len: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random (texts, src_lens, em_hidden, speakers) for batch 1."""
    cfg = synth.model.cfg
    g = torch.Generator().manual_seed(seed)
    texts = torch.randint(2, synth.tokenizer.vocab_size, (1, text_len), generator=g)
    em = torch.randn(1, cfg.emotion_input_size, generator=g)
    speakers = torch.tensor([min(1, cfg.n_speaker - 1)])
    return texts, torch.tensor([text_len]), em, speakers


def _empty_caches(model: Echolancer, max_length: int) -> tuple[Tensor, Tensor]:
    attn = model.dec_layers[0].self_attn
    shape = (len(model.dec_layers), 1, attn.n_kv_heads, max_length, attn.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def _compare(what: str, got: Tensor, want: Tensor) -> float:
    """The largest difference; an ExportMismatch beyond ATOL + RTOL * |want|."""
    if got.shape != want.shape or got.dtype != want.dtype:
        raise ExportMismatch(f"{what}: the export gives {got.dtype} {tuple(got.shape)}, eager {want.dtype} "
                             f"{tuple(want.shape)}")
    if got.dtype == torch.bool or not got.is_floating_point():
        if not torch.equal(got, want):
            raise ExportMismatch(f"{what}: the export differs from the eager chain")
        return 0.0
    diff = (got - want).abs()
    if not bool(torch.all(diff <= ATOL + RTOL * want.abs())):
        raise ExportMismatch(f"{what}: the export differs from the eager chain by up to {float(diff.max()):.3g} "
                             f"(allowed {ATOL:g} + {RTOL:g} x |eager|); refusing to write it")
    return float(diff.max()) if diff.numel() else 0.0


@torch.no_grad()
def check_modules(synth, loaded: dict[str, torch.jit.ScriptModule], max_length: int) -> dict[str, float]:
    """Compare every loaded module with the eager chain on probe inputs; the largest difference each.

    Raises:
        ExportMismatch: naming the module and the output that differs.
    """
    model, worst = synth.model, {}
    # Encoder, at two text lengths (a trace that froze a length fails the second).
    for text_len, seed in ((7, 1), (23, 2)):
        texts, lens, em, spk = _probe_inputs(synth, text_len, seed)
        enc = model.encode(spk if model.speaker_embed is not None else None, texts, lens, em)
        cross_kv, cross_mask, cond = model.decode_memory(enc)
        got = loaded["encoder"](texts, lens, em, spk)
        want = (torch.stack([k for k, _ in cross_kv]), torch.stack([v for _, v in cross_kv]), cross_mask[:, 0, 0], cond)
        worst["encoder"] = max(_compare(f"encoder.pt output {i} (text length {text_len})", g, w)
                               for i, (g, w) in enumerate(zip(got, want)))
    # Decode step, on the eager encoder's outputs of the longer text: a few consecutive steps and a
    # late one; logits, stop and caches.
    memory = want
    state = model.init_decode_state(enc, max_length, torch.float32)
    kc, vc = _empty_caches(model, max_length)
    g = torch.Generator().manual_seed(3)
    worst["decode_step"] = 0.0
    for pos in [0, 1, 2, 3, max_length - 1]:
        tok = torch.randint(0, model.codebook_size, (1, 1), generator=g) if pos else torch.full((1, 1), model.bos_id)
        ip = torch.tensor([pos])
        logits, stop = model.decode_step(tok, ip, state)
        got = loaded["decode_step"](tok, ip, kc, vc, *memory)
        outs = [(got[0], logits), (got[2], torch.stack([c.k for c in state.caches])),
                (got[3], torch.stack([c.v for c in state.caches]))]
        if stop is not None:
            outs.append((got[1], stop))
        for i, (a, b) in enumerate(outs):
            worst["decode_step"] = max(worst["decode_step"], _compare(f"decode_step.pt output {i} at position {pos}", a, b))
    # Pre-encoder decoder: a whole span and one with padding.
    tokens = torch.randint(0, synth.pre_encoder.codebook_size, (1, 30), generator=g)
    worst["preencoder_decoder"] = 0.0
    for n in (30, 25):
        lens = torch.tensor([n])
        worst["preencoder_decoder"] = max(worst["preencoder_decoder"], _compare(
            f"preencoder_decoder.pt (length {n})", loaded["preencoder_decoder"](tokens, lens), synth._mels(tokens, lens)))
    # Vocoder on a mel of log-mel scale.
    mel = torch.randn(1, synth.audio.n_mels, 20, generator=g) * 2.0 - 5.0
    worst["vocoder"] = _compare("vocoder.pt", loaded["vocoder"](mel), synth.vocoder(mel))
    return worst


# --------------------------------------------------------------------------------------------
# The directory
# --------------------------------------------------------------------------------------------


def check_exportable(synth, max_length: int) -> None:
    """What the deployed chain cannot do is refused before any work (a DeployError naming it)."""
    model = synth.model
    if synth.pre_encoder is None or synth.vocoder is None:
        raise DeployError("the deployed chain needs a pre-encoder and an ISTFTNet vocoder (--pre_encoder_dir and "
                          "--istftnet_dir); Griffin-Lim is not exported")
    if model.ref_encoder is not None:
        raise DeployError("vq_token_mode models (a reference utterance as input) are not exported")
    if max_length < 1:
        raise DeployError(f"--max_length must be >= 1, got {max_length}")
    devices = {p.device.type for p in model.parameters()} | {str(synth.pre_encoder.device).split(":")[0],
                                                            synth.vocoder.device.type}
    if devices != {"cpu"}:
        raise DeployError(f"export on the CPU (--device cpu): the chain is on {sorted(devices)}")


def check_output_dir(out_dir: str, overwrite: bool) -> None:
    """A new or empty directory, or (``overwrite``) one whose files of this format may be replaced."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DeployError(f"--output_dir {out_dir} is a file, not a directory")
    present = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if present and not overwrite:
        ours = ", ".join(list(FILES.values()) + [CONFIG_NAME])
        raise DeployError(f"--output_dir {out_dir} already holds {len(present)} file(s) ({present[0]}, ...); choose a "
                          f"new directory, or pass --overwrite to replace {ours} there (and nothing else)")


def export_chain(synth, out_dir: str, max_length: int, overwrite: bool = False,
                 source: Optional[dict] = None) -> list[str]:
    """Export, check and write the directory (see the module docstring); returns the paths written.

    Args:
        synth: a CPU ``pipeline.Synthesizer`` with pre-encoder and ISTFTNet.
        out_dir: the directory; it must not hold files already unless ``overwrite`` (then only the
            files of this format are replaced; anything else in it is left alone).
        max_length: KV-cache positions: the most codec tokens a deployed utterance can have.
        source: recorded in deploy.yaml (where the model came from).
    Raises:
        DeployError: bad input.  ExportMismatch: a module differs from the eager chain.
    """
    check_exportable(synth, max_length)
    check_output_dir(out_dir, overwrite)
    out_dir = os.path.abspath(out_dir)
    ours = list(FILES.values()) + [CONFIG_NAME]
    model_was_training = synth.model.training
    synth.model.eval()
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".deploy-tmp-", dir=parent)
    try:
        modules = build_modules(synth, max_length)
        loaded = {}
        with quiet_jit():
            for name, module in modules.items():
                path = os.path.join(tmp, FILES[name])
                torch.jit.save(module, path)
                loaded[name] = torch.jit.load(path, map_location="cpu").eval()
        worst = check_modules(synth, loaded, max_length)
        reach = _measure_deployed_reach(synth, loaded)
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write("# Echolancer chain for deployment; load with model.deploy.DeployedChain(<this dir>).\n")
            yaml.safe_dump(describe(synth, max_length, reach, worst, source), f, sort_keys=False)
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for name in ours:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
            written.append(os.path.join(out_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        synth.model.train(model_was_training)


def _measure_deployed_reach(synth, loaded: dict[str, torch.jit.ScriptModule]):
    pre, voc = loaded["preencoder_decoder"], loaded["vocoder"]

    def render(tokens: Tensor, n_valid: int) -> Tensor:
        with torch.no_grad():
            return voc(pre(tokens, torch.tensor([n_valid])).transpose(1, 2))[0]

    return measure_reach(render, synth.pre_encoder.codebook_size, synth.pre_encoder.downsample * synth.audio.hop_length)


def describe(synth, max_length: int, reach, worst: dict[str, float], source: Optional[dict]) -> dict:
    """deploy.yaml: everything the deployed chain needs besides the modules (plain values)."""
    model, cfg, audio = synth.model, synth.model.cfg, synth.audio
    attn = model.dec_layers[0].self_attn
    L, kvh, hd = len(model.dec_layers), attn.n_kv_heads, attn.head_dim
    ds = synth.pre_encoder.downsample
    lo, hi = model.length_bounds
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "files": dict(FILES),
        "tokenizer": synth.tokenizer.to_dict(),
        "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id, "eos_id": model.eos_id,
                           "pad_id": model.pad_id, "n_vocab": model.n_vocab},
        "model": {"emotion_input_size": cfg.emotion_input_size, "multi_speaker": cfg.multi_speaker,
                  "n_speaker": cfg.n_speaker, "stop_head": model.stop_head is not None,
                  "decoder_layers": L, "kv_heads": kvh, "head_dim": hd, "decoder_hidden": cfg.decoder.hidden},
        "generation": {"max_length": max_length, "min_tokens_per_text_token": lo, "max_tokens_per_text_token": hi,
                       "gate_threshold": 0.5, "sampling": "greedy, or temperature with top-k"},
        "audio": {"sampling_rate": audio.sampling_rate, "hop_length": audio.hop_length, "n_mels": audio.n_mels,
                  "downsample": ds, "samples_per_token": ds * audio.hop_length},
        "stream": {"reach_left": reach.left, "reach_right": reach.right},
        "shapes": {
            "encoder": f"texts (1, S) long, src_lens (1,) long, em_hidden (1, {cfg.emotion_input_size}) float, "
                       f"speakers (1,) long -> cross_k, cross_v ({L}, 1, {kvh}, S, {hd}), cross_valid (1, S) bool, "
                       f"cond (1, 1, {cfg.decoder.hidden})",
            "decode_step": f"tokens (1, 1) long, input_pos (1,) long, k_cache, v_cache ({L}, 1, {kvh}, {max_length}, "
                           f"{hd}) float (written in place), cross_k, cross_v, cross_valid, cond -> logits "
                           f"(1, {model.n_vocab}), stop (1,), k_cache, v_cache",
            "preencoder_decoder": f"indices (1, T) long, lengths (1,) long -> mel (1, T*{ds}, {audio.n_mels})",
            "vocoder": f"mel (1, {audio.n_mels}, F) -> wav (1, F*{audio.hop_length})",
        },
        "check": {"atol": ATOL, "rtol": RTOL, "max_abs_diff": {k: float(v) for k, v in worst.items()}},
        "source": source or {},
    }
