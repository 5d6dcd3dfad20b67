"""evaluate.py and utils/asr.py: ASR-scored synthesis, on clips whose text is known."""

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluate import main
from model.echolancer import Echolancer
from scripts.make_corpus import make_corpus
from utils.asr import normalize_for_scoring, score_texts
from utils.char_tokenizer import CharTokenizer
from utils.config import TrainConfig, config_to_dict, load_config
from utils.eval_results import bucket_label, length_buckets, worst_sentences
from utils.logger import find_run_dir, read_offline_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "config", "model_tiny.yaml")
SENTENCES = ["The green door at the end of the hall was locked.", "Please close the window before the rain comes in."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_corpus")
    make_corpus(SENTENCES, str(root / "speech"))
    return root / "speech"


@pytest.fixture(scope="module")
def noise(corpus, tmp_path_factory):
    """The same metadata, but every clip is white noise of the same length."""
    root = tmp_path_factory.mktemp("noise") / "noise"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text((corpus / "metadata.csv").read_text())
    rng = np.random.default_rng(0)
    for wav in (corpus / "wavs").iterdir():
        n = sf.info(str(wav)).frames
        sf.write(root / "wavs" / wav.name, (0.3 * rng.standard_normal(n)).astype(np.float32), 22050)
    return root


def run(*argv, wandb: str = "disabled") -> dict:
    out = argv[argv.index("--output_dir") + 1]
    assert main([*argv, "--wandb_mode", wandb]) == 0
    with open(os.path.join(out, "eval_report.json")) as f:
        return json.load(f)


def test_scoring_ignores_case_punctuation_and_how_numbers_are_written():
    assert normalize_for_scoring('Dr. Smith paid $3 for "twenty-one" apples, didn\'t he?') == \
        "doctor smith paid three dollars for twenty one apples didn't he"
    rates = score_texts(["Seven boats left at 9."], ["seven boats left at nine"])
    assert rates.wer == 0.0 and rates.cer == 0.0


def test_rates_are_summed_over_the_corpus_not_averaged_per_sentence():
    rates = score_texts(["one two three four", "five six"], ["one two three four", "five"])
    # One deletion out of six reference words (a per-sentence mean would give 25 %).
    assert rates.wer == pytest.approx(1 / 6)
    assert (rates.deletions, rates.substitutions, rates.insertions, rates.ref_words) == (1, 0, 0, 6)
    assert [u.wer for u in rates.utterances] == [0.0, 0.5]
    with pytest.raises(ValueError, match="no words"):
        score_texts(["..."], ["anything"])


def test_recordings_are_understood_and_noise_is_not(corpus, noise, tmp_path):
    speech = run("--reference_dir", str(corpus), "--output_dir", str(tmp_path / "speech"))
    gt = speech["stages"]["ground_truth"]
    assert gt["utterances"] == 2
    assert gt["wer"] < 0.25  # Piper's voice through Whisper tiny.en: nearly word-perfect
    assert gt["per_utterance"][0]["text"] == SENTENCES[0]
    assert os.path.isfile(tmp_path / "speech" / gt["per_utterance"][0]["wav"])
    assert "| ground_truth | 2 |" in speech["table"]
    # Each recording against itself: the speaker-similarity column's ceiling.
    assert [u["speaker_similarity"] for u in gt["per_utterance"]] == [pytest.approx(1.0, abs=1e-3)] * 2
    assert gt["speaker_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert "speaker sim" in speech["table"].splitlines()[0] and "| 1.000 |" in speech["table"]
    assert speech["speaker_encoder"].startswith("resemblyzer")

    hiss = run("--reference_dir", str(noise), "--output_dir", str(tmp_path / "noise"), "--no_speaker_similarity")
    assert hiss["stages"]["ground_truth"]["wer"] >= 0.9
    assert hiss["stages"]["ground_truth"]["speaker_similarity"] is None and hiss["speaker_encoder"] is None
    assert hiss["stages"]["ground_truth"]["per_utterance"][0]["speaker_similarity"] is None


def test_ladder_scores_the_stages_it_has_components_for_and_names_the_rest(corpus, tmp_path, capsys):
    report = run("--ladder", "--reference_dir", str(corpus), "--output_dir", str(tmp_path / "ladder"))
    err = capsys.readouterr().err
    assert "ground_truth: ..." in err and "griffin_lim: ..." in err  # each stage announced as it starts
    assert list(report["stages"]) == ["ground_truth", "griffin_lim"]
    gl = report["stages"]["griffin_lim"]
    assert gl["wer"] < 0.6  # Griffin-Lim from the true mel stays intelligible
    assert gl["rtf"] is not None and gl["rtf"] > 0
    # Griffin-Lim keeps the voice (measured 0.98 on Piper clips): close to the recordings' 1.
    assert 0.9 < gl["speaker_similarity"] < 1.0
    assert report["stages"]["ground_truth"]["speaker_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert any(n.startswith("vocoder: skipped") for n in report["notes"])
    assert any(n.startswith("model: skipped") for n in report["notes"])


def _untrained_checkpoint(path) -> Echolancer:
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg).eval()
    torch.save({"format_version": 1, "model": model.state_dict(), "model_config": config_to_dict(cfg),
                "train_config": config_to_dict(TrainConfig()), "tokenizer": CharTokenizer().to_dict(),
                "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id,
                                   "eos_id": model.eos_id, "pad_id": model.pad_id}, "step": 5}, path)
    return model


def test_model_stage_counts_stop_failures_and_length_ratio(corpus, tmp_path, capsys):
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config.preencoder import PreEncoderConfig

    _untrained_checkpoint(tmp_path / "m.pt")
    pcfg = load_config(os.path.join(ROOT, "config", "preencoder_tiny.yaml"), schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pcfg), pcfg, str(tmp_path / "pre"))
    # An untrained model never predicts EOS greedily: every sentence runs to max_length.
    report = run("--checkpoint", str(tmp_path / "m.pt"), "--pre_encoder_dir", str(tmp_path / "pre"),
                 "--reference_dir", str(corpus), "--output_dir", str(tmp_path / "out"),
                 "--max_length", "20", "--temperature", "0", "--batch_size", "2", "--speakers", "0", "1",
                 wandb="offline")
    assert list(report["stages"]) == ["ground_truth", "model"]
    printed = capsys.readouterr()
    assert "synthesise" in printed.err and "4/4" in printed.err  # synthesis progress while it runs
    model = report["stages"]["model"]
    assert report["checkpoint_step"] == 5
    assert model["utterances"] == 4  # two sentences x two speakers, in one batch of two at a time
    assert model["stop_failure_rate"] == 1.0
    assert [u["speaker"] for u in model["per_utterance"]] == [0, 1, 0, 1]
    seconds = 20 * 256 / 22050
    ref = [sf.info(str(p)).duration for p in sorted((corpus / "wavs").glob("*.wav"))]
    assert model["length_ratio"] == pytest.approx(np.mean([seconds / r for r in ref for _ in (0, 1)]), abs=1e-3)
    assert model["rtf"] > 0
    wav, sr = sf.read(str(tmp_path / "out" / model["per_utterance"][0]["wav"]))
    assert (len(wav), sr) == (20 * 256, 22050)
    # The same numbers reach W&B (offline run), at the checkpoint's step.
    (row,) = read_offline_history(find_run_dir(str(tmp_path / "out")))
    assert row["_step"] == 5
    assert row["eval/model/stop_failure_rate"] == 1.0
    assert row["eval/ground_truth/wer"] == pytest.approx(report["stages"]["ground_truth"]["wer"])
    # Both sentences have 10 or 11 words: two buckets, logged and reported with the worst sentences.
    assert [b["words"] for b in model["by_length"]] == ["1-10", "11-20"]
    assert row["eval/model/wer_words_1-10"] == model["by_length"][0]["wer"]
    # Speaker similarity: every model clip against the recording of its sentence (the same one for
    # both speakers); an untrained model's 0.2 s of codec noise sounds like no one.
    sims = [u["speaker_similarity"] for u in model["per_utterance"]]
    assert all(s is not None for s in sims) and model["speaker_similarity"] == pytest.approx(np.mean(sims), abs=1e-3)
    assert model["speaker_similarity"] < 0.8
    assert row["eval/model/speaker_similarity"] == model["speaker_similarity"]
    assert row["eval/ground_truth/speaker_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert len(report["worst"]["model"]) == 4 and "heard:" in printed.out


def test_round_trip_without_a_vocoder_goes_through_griffin_lim(corpus, tmp_path):
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config.preencoder import PreEncoderConfig

    pcfg = load_config(os.path.join(ROOT, "config", "preencoder_tiny.yaml"), ["model.generator.downsample=2"],
                       schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pcfg), pcfg, str(tmp_path / "pre"))
    report = run("--ladder", "--reference_dir", str(corpus), "--pre_encoder_dir", str(tmp_path / "pre"),
                 "--output_dir", str(tmp_path / "out"))
    assert list(report["stages"]) == ["ground_truth", "griffin_lim", "round_trip"]
    assert "round_trip: Griffin-Lim (no --istftnet_dir)" in report["notes"]
    assert any(n.startswith("vocoder: skipped") for n in report["notes"])
    # Two frames per token, cropped back to the clip's own mel length: as long as Griffin-Lim's clip.
    rt, gl = report["stages"]["round_trip"], report["stages"]["griffin_lim"]
    assert [u["seconds"] for u in rt["per_utterance"]] == [u["seconds"] for u in gl["per_utterance"]]


def _utt(text: str, transcript: str, hit: bool = False, seconds: float = 1.0) -> dict:
    return {"text": text, "transcript": transcript, "wer": score_texts([text], [transcript]).wer,
            "cer": score_texts([text], [transcript]).cer, "hit_max_length": hit, "seconds": seconds,
            "expected_seconds": 1.0, "wav": None}


def test_sentence_length_buckets_are_labelled_by_their_word_range():
    edges = (10, 20, 30, 45)
    assert [bucket_label(n, edges) for n in (1, 10, 11, 30, 31, 45, 46, 90)] == \
        ["1-10", "1-10", "11-20", "21-30", "31-45", "31-45", "46+", "46+"]


def test_wer_by_length_is_the_corpus_rate_within_each_bucket():
    short_ok = _utt("the cat sat down", "the cat sat down")
    short_bad = _utt("a dog ran off", "a frog ran")  # 2 errors in 4 words
    long_text = " ".join(["word"] * 35)
    long_cut = _utt(long_text, " ".join(["word"] * 28), hit=True, seconds=2.0)  # 7 deletions of 35
    rows = length_buckets([short_ok, long_cut, short_bad], (10, 20, 30, 45))
    assert [r["words"] for r in rows] == ["1-10", "31-45"]  # empty buckets left out, in order
    assert rows[0]["n"] == 2 and rows[0]["wer"] == pytest.approx(2 / 8)  # per word, not a mean of rates
    assert rows[0]["stop_failure_rate"] == 0.0
    assert rows[1]["wer"] == pytest.approx(7 / 35) and rows[1]["stop_failure_rate"] == 1.0
    assert rows[1]["length_ratio"] == pytest.approx(2.0)


def test_worst_sentences_come_first_with_what_the_asr_heard():
    utts = [_utt("one two three", "one two three"), _utt("four five six", "for"), _utt("seven eight", "seven ate")]
    worst = worst_sentences(utts, 2)
    assert [w["text"] for w in worst] == ["four five six", "seven eight"]
    assert worst[0]["transcript"] == "for"


def test_length_buckets_must_increase(tmp_path, capsys):
    assert main(["--reference_dir", "x", "--output_dir", str(tmp_path), "--length_buckets", "20", "10"]) == 2
    assert "--length_buckets 20 10" in capsys.readouterr().err


def test_speaker_similarity_without_resemblyzer_is_one_line_naming_the_install_and_the_flag(corpus, tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # as if it were not installed
    assert main(["--reference_dir", str(corpus), "--output_dir", str(tmp_path), "--wandb_mode", "disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("evaluate.py: error: speaker similarity needs the resemblyzer package")
    assert "pip install --no-deps -r requirements-nodeps.txt" in err and "--no_speaker_similarity" in err
