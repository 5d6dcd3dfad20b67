"""pipeline.py: the real chain text -> BERT -> tiny Echolancer -> trained pre-encoder -> vocoder/Griffin-Lim."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

import train_preencoder as tp
from bertfe import BERTFrontEnd, find_packaged_minilm
from istftnetfe import ISTFTNetFE
from model.echolancer import Echolancer
from model.istftnet import ISTFT, ISTFTNetGenerator
from model.istftnet_artifact import export_istftnet
from model.preencoder import PreEncoder
from model.preencoder_artifact import export_preencoder
from pipeline import PipelineError, Synthesizer, build_synthesizer
from scripted_preencoder import ScriptedPreEncoder
from utils.audio import save_wav
from utils.char_tokenizer import CharTokenizer
from utils.config import AudioConfig, ModelConfig, config_from_dict, load_config
from utils.config.preencoder import PreEncoderConfig
from utils.config.vocoder import GeneratorConfig

TEXTS = ["Hello there, how are you?", "I am so angry about this!"]
GEN = {"max_length": 12, "min_length": 3, "temperature": 0.0}


def write_wavs(folder, n: int) -> None:
    """Chirps of a few hundred milliseconds: enough for a few pre-encoder training steps."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        t = np.arange(9000 + 1000 * i) / 22050
        f0, f1 = 200 + 150 * i, 2500 + 400 * i
        sf.write(os.path.join(folder, f"clip{i}.wav"),
                 (0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))).astype(np.float32), 22050)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    # A tiny pre-encoder trained for a few steps on generated audio, exported, loaded back.
    write_wavs(root / "wavs", n=3)
    cfg = load_config("config/preencoder_tiny.yaml", ["training.max_steps=4", "training.batch_size=2",
                                                      "training.segment_frames=16"], schema=PreEncoderConfig)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")  # W&B logging of this script is tested in tests/training/test_preencoder.py
        export = tp.train(cfg, str(root / "wavs"), str(root / "pe")).export_dir
    torch.manual_seed(0)
    gen = ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=32), n_mels=80).eval()
    export_istftnet(gen, ISTFT(16, 4), AudioConfig(), str(root / "voc"), 22050, devices=["cpu"])
    model = Echolancer.from_config(load_config("config/model_tiny.yaml"))
    return {"root": root, "pe_dir": export, "voc_dir": str(root / "voc"), "model": model.eval(),
            "tok": CharTokenizer(), "bert": BERTFrontEnd(find_packaged_minilm())}


@pytest.fixture(scope="module")
def synth_gl(parts):
    return build_synthesizer(parts["model"], parts["tok"], bert_model=parts["bert"], pre_encoder_dir=parts["pe_dir"])


def test_griffin_lim_chain_writes_tokens_times_hop_samples(parts, synth_gl, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="pipeline"):
        utts = synth_gl.synthesize(TEXTS, speakers=[0, 1], **GEN)
    assert "Griffin-Lim" in caplog.text
    pe = ScriptedPreEncoder(parts["pe_dir"])
    for i, u in enumerate(utts):
        T = u.tokens.shape[0]
        assert 3 <= T <= 12 and bool(((u.tokens >= 0) & (u.tokens < 1000)).all())
        assert u.vocoder == "griffin_lim" and u.sample_rate == 22050 and u.speaker == i
        assert u.gate.shape == ((T,) if u.hit_max_length else (T + 1,))  # the stopping step is kept
        assert u.mel.shape == (T, 80) and u.wav.shape == (T * 256,)
        assert u.normalized_text == parts["tok"].normalize_text(TEXTS[i])
        torch.testing.assert_close(u.mel, pe.decode(u.tokens[None])[0])  # the chain's mel is the codec's
        assert float(np.abs(u.wav).max()) > 1e-3  # audible, not silence
        path = tmp_path / f"{i}.wav"
        save_wav(path, u.wav, u.sample_rate)
        info = sf.info(path)
        assert info.samplerate == 22050 and info.frames == T * 256


def test_istftnet_chain_uses_the_vocoder(parts):
    synth = build_synthesizer(parts["model"], parts["tok"], bert_model=parts["bert"],
                              pre_encoder_dir=parts["pe_dir"], istftnet_dir=parts["voc_dir"])
    utts = synth.synthesize(TEXTS, speakers=[2, 3], **GEN)
    voc = ISTFTNetFE.load_ts(parts["voc_dir"], "cpu")
    for u in utts:
        T = u.tokens.shape[0]
        assert u.vocoder == "istftnet" and u.wav.shape == (T * 256,)
        expected = voc(u.mel.T[None])[0].numpy()  # (B, C, T) layout for the vocoder
        np.testing.assert_allclose(u.wav, expected, atol=1e-4)


def test_batched_equals_one_by_one_under_greedy_decoding(synth_gl):
    batched = synth_gl.synthesize(TEXTS, speakers=[0, 1], **GEN)
    for i, text in enumerate(TEXTS):
        alone = synth_gl.synthesize([text], speakers=[i], **GEN)[0]
        assert torch.equal(alone.tokens, batched[i].tokens)
        torch.testing.assert_close(alone.mel, batched[i].mel, atol=1e-4, rtol=1e-4)


def test_bert_vector_reaches_the_model_and_zeros_without_bert(parts, synth_gl, monkeypatch):
    seen = []
    real = parts["model"].infer

    def spy(*args, **kwargs):
        seen.append(kwargs["em_hidden"].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(parts["model"], "infer", spy)
    synth_gl.synthesize(TEXTS, speakers=[0, 1], **GEN)
    torch.testing.assert_close(seen[-1], parts["bert"](TEXTS))
    no_bert = Synthesizer(parts["model"], parts["tok"], pre_encoder=synth_gl.pre_encoder)
    no_bert.synthesize(TEXTS[:1], **GEN)
    assert seen[-1].shape == (1, 384) and bool((seen[-1] == 0).all())


def test_tokens_only_without_a_pre_encoder(parts):
    u = Synthesizer(parts["model"], parts["tok"]).synthesize(TEXTS[:1], **GEN)[0]
    assert u.mel is None and u.wav is None and u.vocoder is None and u.tokens.shape[0] >= 3


def test_failing_stages_are_named(parts, synth_gl, monkeypatch):
    with pytest.raises(PipelineError, match=r"\[tokenizer\].*nothing speakable") as e:
        synth_gl.synthesize(["Hello.", "?!"], **GEN)
    assert e.value.stage == "tokenizer"
    with pytest.raises(PipelineError, match=r"\[echolancer\].*speaker"):
        synth_gl.synthesize(TEXTS, speakers=[0, 9], **GEN)

    def boom(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(synth_gl.pre_encoder, "decode", boom)
    with pytest.raises(PipelineError, match=r"\[pre-encoder\].*decoder exploded"):
        synth_gl.synthesize(TEXTS[:1], **GEN)


def test_component_mismatches_are_errors_at_build_time(parts, tmp_path):
    model, tok = parts["model"], parts["tok"]
    # Codebook: a 200-code pre-encoder for a 1000-code model.
    small = config_from_dict(PreEncoderConfig, {"model": {"generator": {"fsq_levels": [8, 5, 5], "hidden": 16,
                                                                         "encoder_blocks": 0, "decoder_blocks": 0}}})
    export_preencoder(PreEncoder.from_config(small), small, str(tmp_path / "pe200"))
    with pytest.raises(PipelineError, match=r"\[pre-encoder\].*codebook size 200.*1000"):
        build_synthesizer(model, tok, pre_encoder_dir=str(tmp_path / "pe200"))
    # Audio settings: a pre-encoder made for 24 kHz audio.
    other = config_from_dict(PreEncoderConfig, {"audio": {"sampling_rate": 24000},
                                                 "model": {"generator": {"hidden": 16, "encoder_blocks": 0,
                                                                         "decoder_blocks": 0}}})
    export_preencoder(PreEncoder.from_config(other), other, str(tmp_path / "pe24k"))
    with pytest.raises(PipelineError, match=r"\[pre-encoder\].*sampling_rate: 22050 vs 24000"):
        build_synthesizer(model, tok, pre_encoder_dir=str(tmp_path / "pe24k"))
    # BERT width: a model expecting 768-wide vectors.
    wide = Echolancer.from_config(config_from_dict(ModelConfig, {"model": {"emotion_input_size": 768}}))
    with pytest.raises(PipelineError, match=r"\[bert\].*384-wide.*768"):
        build_synthesizer(wide, tok, bert_model=parts["bert"])
    with pytest.raises(PipelineError, match=r"\[vocoder\].*needs mels"):
        build_synthesizer(model, tok, istftnet_dir=parts["voc_dir"])
    with pytest.raises(PipelineError, match=r"\[pre-encoder\].*not found"):
        build_synthesizer(model, tok, pre_encoder_dir=str(tmp_path / "missing"))
    assert os.path.isdir(parts["pe_dir"])


def test_train_py_test_interval_writes_full_chain_audio_to_disk_and_wandb(parts, tmp_path, monkeypatch):
    """train.py's test interval through the same chain: BERT + trained pre-encoder + ISTFTNet."""
    import logging

    from train import main as train_main
    from utils.logger import find_run_dir, read_offline_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    handlers = logging.root.handlers[:]  # train.main() installs a file handler; restore afterwards
    out = tmp_path / "run"
    try:
        code = train_main([
            "--model_config", "config/model_tiny.yaml", "--train_config", "config/train_tiny.yaml",
            "--train_data_dir", str(tmp_path / "train"), "--create_dummy", "--dummy_files", "8",
            "--output_dir", str(out), "--bert_model", find_packaged_minilm(),
            "--pre_encoder_dir", parts["pe_dir"], "--istftnet_dir", parts["voc_dir"],
            "--test_sentences", "Hello there.", "--test_speakers", "1", "3",
            "--set", "training.max_steps=2", "--set", "training.test_step=2", "--set", "training.batch_size=4",
            "--set", "training.test_max_length=8", "--set", "training.test_temperature=0.0",
            "--set", "training.val_step=1000", "--set", "training.save_step=1000", "--set", "training.eval_step=2",
        ])
    finally:
        for h in logging.root.handlers:
            if h not in handlers:
                h.close()
        logging.root.handlers[:] = handlers
    assert code == 0
    folder = out / "samples" / "step_0000002"
    names = sorted(os.listdir(folder))
    assert names == ["00_spk1.wav", "01_spk3.wav"]
    frames = []
    for name in names:
        info = sf.info(folder / name)
        assert info.samplerate == 22050 and info.frames % 256 == 0 and 0 < info.frames <= 8 * 256
        frames.append(info.frames // 256)
    rows = {r["_step"]: r for r in read_offline_history(find_run_dir(str(out)))}
    assert rows[2]["test/audio_00/_type"] == "audio-file" and rows[2]["test/audio_01/_type"] == "audio-file"
    assert rows[2]["test/mean_tokens"] == pytest.approx(np.mean(frames))  # one token = one mel frame = 256 samples
    # eval_step: the same audio scored by the offline ASR; an untrained model is not understood
    assert rows[2]["eval/wer"] >= 0.5 and rows[2]["eval/cer"] > 0.3
