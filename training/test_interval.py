"""The training test interval: synthesise novel sentences through the shared pipeline and log them.

It calls ``pipeline.build_synthesizer`` / ``Synthesizer.synthesize`` (the one text -> waveform chain
that ``infer.py`` also uses) and writes ``<output_dir>/samples/step_XXXXXXX/<i>_spk<s>.wav``, logs
the audio, a mel image and generation statistics. Without a pre-encoder there is no mel and hence
no audio: that is said once, and only token statistics are logged.

Every ``training.eval_step`` steps it also transcribes the test audio with the offline ASR of
``evaluate.py`` (``utils.asr``: Whisper tiny.en) and logs word and character error rates, so a
run shows when the model starts to speak.

Generation runs under a forked RNG with a fixed seed, so testing never changes the training run
(exact resume holds whether or not a test happened).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import numpy as np
import torch

from utils.audio import save_wav
from utils.config import ConfigError
from utils.logger import Logger

log = logging.getLogger("echolancer.train")

DEFAULT_TEST_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Did you remember to water the plants before leaving?",
]


class TestInterval:
    """Runs the shared synthesiser on the test sentences every ``test_step``.

    Args:
        model: the (unwrapped) Echolancer model; switched to eval and back to train.
        tokenizer: the run's CharTokenizer.
        output_dir: run directory; samples go to ``samples/step_XXXXXXX/``.
        sentences, speakers: what to synthesise (every sentence for every speaker).
        bert_model, pre_encoder_dir, istftnet_dir: pipeline components (each optional).
        gen_kwargs: extra arguments for ``Synthesizer.synthesize`` (e.g. ``max_length``).
        audio: the model config's audio settings; the pre-encoder and vocoder must match them.
        score_with_asr: load the offline ASR so that ``run(..., score=True)`` can report WER/CER.

    The synthesiser is built here, before training starts, so a missing or mismatched component
    is an error at start-up rather than at the first test step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        output_dir: str,
        sentences: list[str],
        speakers: list[int],
        bert_model: Optional[str],
        pre_encoder_dir: Optional[str],
        istftnet_dir: Optional[str],
        device: torch.device,
        seed: int = 0,
        gen_kwargs: Optional[dict[str, Any]] = None,
        audio=None,
        score_with_asr: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.output_dir = output_dir
        self.sentences = sentences or DEFAULT_TEST_SENTENCES
        n_speaker = model.cfg.n_speaker
        bad = [s for s in speakers if not 0 <= s < n_speaker]
        if bad:
            raise ValueError(f"--test_speakers / training.test_speakers {bad} out of range [0, {n_speaker}) (model.n_speaker)")
        self.speakers = speakers or [0]
        self.bert_model = bert_model
        self.pre_encoder_dir = pre_encoder_dir
        self.istftnet_dir = istftnet_dir
        self.device = device
        self.seed = seed
        self.gen_kwargs = gen_kwargs or {}
        self._said_why = False
        from pipeline import build_synthesizer  # the pipeline floor sits above model/ and data/

        # Loading front ends may draw random numbers (weight init before loading): keep them
        # out of the training streams.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self._synth = build_synthesizer(
                model, tokenizer, bert_model=bert_model, pre_encoder_dir=pre_encoder_dir,
                istftnet_dir=istftnet_dir, device=device, audio=audio,
            )
        self.asr = None
        if score_with_asr:
            if pre_encoder_dir is None:
                raise ConfigError("training.eval_step scores test audio with ASR: it needs --pre_encoder_dir")
            from utils.asr import WhisperASR

            self.asr = WhisperASR()

    def run(self, step: int, logger: Logger, score: bool = False) -> dict[str, float]:
        """Synthesise, save and log; with ``score``, also ASR-score the audio. Returns what was logged."""
        if self.pre_encoder_dir is None and not self._said_why:
            log.info("test interval: no --pre_encoder_dir, so codec tokens cannot become mels or audio; "
                     "logging token statistics only")
            self._said_why = True
        texts = [t for t in self.sentences for _ in self.speakers]
        speakers = [s for _ in self.sentences for s in self.speakers]
        was_training = self.model.training
        self.model.eval()
        try:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(self.seed)
                # A failing stage raises PipelineError naming it; the trainer saves, then re-raises.
                utts = self._synth.synthesize(texts, speakers, **self.gen_kwargs)
        finally:
            self.model.train(was_training)

        out_dir = os.path.join(self.output_dir, "samples", f"step_{step:07d}")
        os.makedirs(out_dir, exist_ok=True)
        lengths, hit_max = [], []
        for i, u in enumerate(utts):
            lengths.append(len(u.tokens))
            hit_max.append(float(u.hit_max_length))
            name = f"{i:02d}_spk{u.speaker}"
            if u.wav is not None:
                save_wav(os.path.join(out_dir, name + ".wav"), u.wav, u.sample_rate)
                logger.log_audio(f"test/audio_{i:02d}", u.wav, u.sample_rate, step, caption=f"spk {u.speaker}: {u.text}")
            if u.mel is not None:
                mel = np.asarray(u.mel, dtype=np.float32).T[::-1]  # (C, T), low frequencies at the bottom
                logger.log_image(f"test/mel_{i:02d}", mel, step, caption=u.text)
        stats = {
            "test/mean_tokens": float(np.mean(lengths)) if lengths else 0.0,
            "test/hit_max_length": float(np.mean(hit_max)) if hit_max else 0.0,
        }
        if score and self.asr is not None:
            from utils.asr import score_waveforms

            voiced = [u for u in utts if u.wav is not None]
            rates, _ = score_waveforms(self.asr, [u.text for u in voiced], [u.wav for u in voiced],
                                       [u.sample_rate for u in voiced])
            stats.update({"eval/wer": rates.wer, "eval/cer": rates.cer})
            log.info("step %d: ASR word error rate %.1f %%, character error rate %.1f %%",
                     step, 100 * rates.wer, 100 * rates.cer)
        logger.log(stats, step)
        return stats
