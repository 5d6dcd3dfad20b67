"""preprocess.py on a tiny corpus rendered offline with Piper, in every layout it reads."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from data.dataset import EcholancerDataset, recorded_codec_levels
from data.qa_report import distribution
from preprocess import main, preprocess, split_keys
from scripted_preencoder import ScriptedPreEncoder
from scripts.make_corpus import make_corpus
from utils.audio import load_wav, mel_spectrogram
from utils.char_tokenizer import CharTokenizer
from utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CFG = os.path.join(ROOT, "config", "model_tiny.yaml")
SENTENCES = [
    "The red kite rose over the hill.",
    "Two small boats left the harbor.",
    "She sang softly while she worked.",
    "A cold wind came down the valley.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An LJSpeech-layout corpus of four Piper clips."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(SENTENCES, str(root / "ljs"))
    return root / "ljs"


@pytest.fixture(scope="module")
def pre_dir(tmp_path_factory):
    """An exported (untrained, seeded) tiny pre-encoder: codes are arbitrary but deterministic."""
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config.preencoder import PreEncoderConfig

    cfg = load_config(os.path.join(ROOT, "config", "preencoder_tiny.yaml"), schema=PreEncoderConfig)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("pre") / "export"
    export_preencoder(PreEncoder.from_config(cfg), cfg, str(out))
    return str(out)


def run(input_dir, out, pre_dir, **kw):
    return preprocess(str(input_dir), str(out), pre_dir, MODEL_CFG, progress=False, **kw)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ljspeech_files_match_the_dataset_format_and_the_one_mel_function(corpus, pre_dir, tmp_path):
    out = tmp_path / "out"
    report = run(corpus, out, pre_dir, val_fraction=0.25)
    assert report["utterances"] == {"train": 3, "val": 1, "skipped_existing": 0, "errors": 0}
    pre, tok = ScriptedPreEncoder(pre_dir), CharTokenizer()
    audio = load_config(MODEL_CFG).preprocessing.audio
    rows = (corpus / "metadata.csv").read_text().splitlines()
    for row in rows:
        utt_id, _text, norm = row.split("|")
        (path,) = [p for p in (out / "train" / f"{utt_id}.pt", out / "val" / f"{utt_id}.pt") if p.exists()]
        d = load(path)
        assert set(d) == {"text", "mel", "speaker", "fingerprint"}  # no emotion without --bert_model
        assert isinstance(d["fingerprint"], str) and len(d["fingerprint"]) == 64  # inputs' sha256
        assert d["text"].dtype == torch.long and d["text"].tolist() == tok.encode(norm)
        wav = load_wav(corpus / "wavs" / f"{utt_id}.wav", audio.sampling_rate)
        assert d["mel"].dtype == torch.long and d["mel"].dim() == 1
        assert d["mel"].numel() == wav.numel() // 256  # no trimming: N samples -> N // hop tokens
        assert 0 <= int(d["mel"].min()) and int(d["mel"].max()) < 1000
        mel = mel_spectrogram(wav, audio).transpose(1, 2)  # the shared mel, (1, T, C)
        assert torch.equal(d["mel"], pre.encode(mel)[0])
        assert d["speaker"] == 0 and isinstance(d["speaker"], int)
    # The training dataset reads every file (it validates types, ranges and shapes).
    assert len(EcholancerDataset(str(out / "train"), load_config(MODEL_CFG))) == 3
    assert json.loads((out / "speakers.json").read_text()) == {"ljs": 0}


def test_rerun_skips_finished_files_and_only_redoes_missing_ones(corpus, pre_dir, tmp_path):
    out = tmp_path / "out"
    run(corpus, out, pre_dir, val_fraction=0.25)
    files = sorted(out.glob("*/*.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    report = run(corpus, out, pre_dir, val_fraction=0.25)
    assert report["utterances"]["skipped_existing"] == 3
    assert files[0].exists()
    for p in files[1:]:
        assert p.stat().st_mtime_ns == stamps[p]  # never rewritten
    # The QA report still covers every utterance, finished earlier or now.
    assert report["duration_seconds"]["count"] == 4
    assert len(report["preencoder_mel_l1"]["per_utterance"]) == 4

    # Killed between writing a file and its manifest line: durations come back from the files.
    (out / "manifest.jsonl").unlink()
    report = run(corpus, out, pre_dir, val_fraction=0.25)
    seconds = sum(sf.info(str(p)).duration for p in (corpus / "wavs").glob("*.wav"))
    assert report["total_hours"] * 3600 == pytest.approx(seconds, abs=0.07)  # < one hop per clip + rounding
    assert report["preencoder_mel_l1"]["count"] == 0  # unknown for files finished by an earlier run


def test_rerun_redoes_outputs_whose_text_audio_or_settings_changed_and_replaces_unreadable_ones(
    corpus, pre_dir, tmp_path
):
    # Before: a transcript edit kept the stale .pt (old text), and a truncated .pt counted as done.
    import shutil

    src = tmp_path / "ljs"
    shutil.copytree(corpus, src)
    out = tmp_path / "out"
    run(src, out, pre_dir, val_fraction=0.25)
    files = {p.stem: p for p in out.glob("*/*.pt")}
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}
    rows = (src / "metadata.csv").read_text().splitlines()
    edited_id = rows[0].split("|")[0]
    rows[0] = f"{edited_id}|The blue kite rose over the hill.|The blue kite rose over the hill."
    (src / "metadata.csv").write_text("\n".join(rows) + "\n")
    truncated = files[rows[1].split("|")[0]]
    truncated.write_bytes(truncated.read_bytes()[:40])
    audio_id = rows[2].split("|")[0]
    wav, sr = sf.read(str(src / "wavs" / f"{audio_id}.wav"), dtype="float32")
    sf.write(str(src / "wavs" / f"{audio_id}.wav"), wav[: len(wav) // 2], sr)

    report = run(src, out, pre_dir, val_fraction=0.25)
    assert report["redone"] == {"changed": 2, "unreadable": 1}
    assert report["utterances"]["skipped_existing"] == 1
    assert load(files[edited_id])["text"].tolist() == CharTokenizer().encode("The blue kite rose over the hill.")
    assert load(truncated)["mel"].numel() > 0
    assert load(files[audio_id])["mel"].numel() == len(wav[: len(wav) // 2]) // 256
    kept = rows[3].split("|")[0]
    assert files[kept].stat().st_mtime_ns == stamps[kept]  # unchanged inputs: never rewritten
    # A changed setting (here trimming) redoes everything.
    assert run(src, out, pre_dir, val_fraction=0.25, trim=True)["redone"] == {"changed": 4, "unreadable": 0}


def test_split_is_deterministic_independent_of_order_and_never_empty():
    keys = [f"utt_{i:03d}" for i in range(50)]
    val = split_keys(keys, 0.1)
    assert len(val) == 5 and val == split_keys(list(reversed(keys)), 0.1)
    assert len(split_keys(keys[:10], 0.02)) == 1  # at least one validation file
    assert split_keys(keys, 0.0) == set()


def test_bad_rows_are_reported_with_file_and_line_and_the_run_ends_with_a_summary(corpus, pre_dir, tmp_path, capsys):
    data = tmp_path / "bad"
    shutil.copytree(corpus, data)
    (data / "wavs" / "broken.wav").write_bytes(b"not a wav file")
    with open(data / "metadata.csv", "a") as f:
        f.write("two|fields\nghost|Where is my file?|where is my file?\nempty||\ndots|...|...\n"
                "broken|A broken file.|a broken file.\n")
    out = tmp_path / "out"
    rc = main(["--input_dir", str(data), "--output_dir", str(out), "--pre_encoder_dir", pre_dir,
               "--config", MODEL_CFG, "--no_progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    csv = str(data / "metadata.csv")
    report = json.loads((out / "qa_report.json").read_text())
    assert report["error_counts"] == {"csv_fields": 1, "missing_wav": 1, "empty_text": 1,
                                      "unspeakable_text": 1, "unreadable_wav": 1}
    assert [e["where"] for e in report["errors"]] == [f"{csv}:{n}" for n in (5, 6, 7, 8, 9)]
    assert f"{csv}:5: 2 fields, expected 3" in printed
    assert "Traceback" not in printed
    assert len(list(out.glob("*/*.pt"))) == 4  # the good rows still made it


def test_multi_speaker_folders_at_another_rate_and_stereo_keep_speaker_ids_stable(corpus, pre_dir, tmp_path):
    data = tmp_path / "multi"
    for name in ("bob", "carol"):  # the same clips as 16 kHz stereo: resampled and downmixed on the way in
        (data / name / "wavs").mkdir(parents=True)
        shutil.copy(corpus / "metadata.csv", data / name / "metadata.csv")
        for wav in (corpus / "wavs").iterdir():
            x = load_wav(wav, 16000).numpy()
            sf.write(data / name / "wavs" / wav.name, np.stack([x, x], 1), 16000)
    out = tmp_path / "out"
    report = run(data, out, pre_dir, val_fraction=0.0)
    assert report["layout"] == "speaker_folders"
    assert json.loads((out / "speakers.json").read_text()) == {"bob": 0, "carol": 1}
    d = load(out / "train" / "carol_EL_0002.pt")
    n16 = sf.info(str(data / "carol" / "wavs" / "EL_0002.wav")).frames
    assert d["speaker"] == 1
    assert d["mel"].numel() == round(n16 * 22050 / 16000) // 256
    assert report["speakers"]["bob"]["utterances"] == 4

    # A new speaker that sorts first gets a new id; finished files keep theirs.
    shutil.copytree(data / "bob", data / "alice")
    run(data, out, pre_dir, val_fraction=0.0)
    assert json.loads((out / "speakers.json").read_text()) == {"bob": 0, "carol": 1, "alice": 2}
    assert load(out / "train" / "alice_EL_0001.pt")["speaker"] == 2


def test_speaker_column_layout(corpus, pre_dir, tmp_path):
    data = tmp_path / "col"
    shutil.copytree(corpus / "wavs", data / "wavs")
    rows = [r.split("|") for r in (corpus / "metadata.csv").read_text().splitlines()]
    spk = ["dan", "eve", "dan", "eve"]
    (data / "metadata.csv").write_text("".join(f"{r[0]}|{s}|{r[1]}|{r[2]}\n" for r, s in zip(rows, spk)))
    report = run(data, tmp_path / "out", pre_dir, val_fraction=0.0)
    assert report["layout"] == "speaker_column"
    assert {n: s["utterances"] for n, s in report["speakers"].items()} == {"dan": 2, "eve": 2}
    assert load(tmp_path / "out" / "train" / "eve_EL_0002.pt")["speaker"] == 1


def test_qa_report_hours_outliers_unmappable_characters_and_round_trip_error(corpus, pre_dir, tmp_path):
    data = tmp_path / "qa"
    shutil.copytree(corpus, data)
    # EL_0005 reuses a short clip with a far too long transcript: a chars-per-second outlier.
    shutil.copy(data / "wavs" / "EL_0001.wav", data / "wavs" / "EL_0005.wav")
    long_text = "Fish * chips ^ noon " + "and a very long transcript that no one could read in two seconds " * 3
    with open(data / "metadata.csv", "a") as f:
        f.write(f"EL_0005|{long_text}|\n")
    report = run(data, tmp_path / "out", pre_dir, val_fraction=0.0)
    seconds = [sf.info(str(p)).duration for p in sorted((data / "wavs").glob("*.wav"))]
    assert report["speakers"]["qa"]["hours"] == pytest.approx(sum(seconds) / 3600, rel=1e-3)
    assert report["total_hours"] == pytest.approx(sum(seconds) / 3600, rel=1e-3)
    cps = report["chars_per_second"]
    # Outliers are listed farthest from the median first. Piper's clip lengths vary a little from
    # run to run, and with five clips the quartile fences are tight enough that a normal clip can
    # cross one, so only the planted one's place is asserted (the fence rule has its own test).
    assert cps["outliers"][0]["key"] == "EL_0005"
    assert cps["outliers"][0]["value"] > cps["fences"][1]
    assert set(cps) >= {"count", "min", "median", "p95", "max", "mean", "outliers"}
    assert report["duration_seconds"]["count"] == 5
    assert report["unmappable_characters"] == {"*": 1, "^": 1}  # what the normaliser cannot read out
    assert 0 <= report["normalizer"]["changed_share"] <= 1
    # The codec's grid, which training checks model.code_levels against (recorded_codec_levels).
    assert report["settings"]["fsq_levels"] == list(ScriptedPreEncoder(pre_dir).fsq_levels)
    assert recorded_codec_levels(str(tmp_path / "out" / "train")) == (report["settings"]["fsq_levels"],
                                                                        str(tmp_path / "out" / "qa_report.json"))

    # The round-trip error is the mean |mel - decode(encode(mel))| of each clip.
    pre = ScriptedPreEncoder(pre_dir)
    mel = mel_spectrogram(load_wav(data / "wavs" / "EL_0003.wav", 22050), pre.audio).transpose(1, 2)
    expected = float((pre.decode(pre.encode(mel))[:, : mel.shape[1]] - mel).abs().mean())
    assert report["preencoder_mel_l1"]["per_utterance"]["EL_0003"] == pytest.approx(expected, abs=1e-4)


def test_distribution_flags_far_outliers_only():
    values = {f"k{i}": 1.0 + 0.01 * i for i in range(20)} | {"slow": 5.0, "fast": -3.0}
    d = distribution(values)
    assert {o["key"] for o in d["outliers"]} == {"slow", "fast"}
    assert [o["key"] for o in distribution(values, high_only=True)["outliers"]] == ["slow"]


def test_trimming_removes_padded_silence_but_is_off_by_default(corpus, pre_dir, tmp_path):
    data = tmp_path / "pad"
    (data / "wavs").mkdir(parents=True)
    x, sr = sf.read(str(corpus / "wavs" / "EL_0001.wav"), dtype="float32")
    padded = np.concatenate([np.zeros(sr, np.float32), x, np.zeros(sr, np.float32)])
    sf.write(data / "wavs" / "EL_0001.wav", padded, sr)
    (data / "metadata.csv").write_text((corpus / "metadata.csv").read_text().splitlines()[0] + "\n")
    run(data, tmp_path / "off", pre_dir, val_fraction=0.0)
    run(data, tmp_path / "on", pre_dir, val_fraction=0.0, trim=True)
    off = load(tmp_path / "off" / "train" / "EL_0001.pt")["mel"].numel()
    on = load(tmp_path / "on" / "train" / "EL_0001.pt")["mel"].numel()
    assert off == len(padded) // 256
    assert on < off - 150  # two seconds of silence are ~172 frames


def test_bert_adds_an_emotion_vector_of_the_encoder_width(corpus, pre_dir, tmp_path):
    from bertfe import find_packaged_minilm

    data = tmp_path / "one"
    (data / "wavs").mkdir(parents=True)
    shutil.copy(corpus / "wavs" / "EL_0001.wav", data / "wavs")
    (data / "metadata.csv").write_text((corpus / "metadata.csv").read_text().splitlines()[0] + "\n")
    run(data, tmp_path / "out", pre_dir, val_fraction=0.0, bert_model=find_packaged_minilm())
    d = load(tmp_path / "out" / "train" / "EL_0001.pt")
    assert d["emotion"].dtype == torch.float32 and d["emotion"].shape == (384,)
    assert set(d) == {"text", "mel", "speaker", "emotion", "fingerprint"}
