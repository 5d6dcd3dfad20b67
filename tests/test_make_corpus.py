"""scripts/make_corpus.py: offline corpora in the layouts preprocess.py reads."""

import os

import pytest
import soundfile as sf

from scripts.make_corpus import main, make_corpus, parse_voice, read_sentences
from utils.char_tokenizer import normalize_text

SENTENCES = ["The red kite rose over the hill.", "Two small boats left at 9 o'clock."]


def test_voice_specs_parse_to_folder_names_and_reject_unknown_options():
    v = parse_voice("joe,pitch=1.2,length_scale=0.9")
    assert (v.engine, v.options, v.name) == ("joe", {"pitch": 1.2, "length_scale": 0.9}, "joe_pitch_1_2_length_scale_0_9")
    assert parse_voice("espeak:en-us+f3").options == {"voice": "en-us+f3"}
    with pytest.raises(ValueError, match="allowed keys"):
        parse_voice("joe,speed=2")
    with pytest.raises(ValueError, match="unknown voice"):
        parse_voice("alice")
    with pytest.raises(ValueError, match="must be > 0"):
        parse_voice("joe,pitch=0")


def test_sentence_files_skip_comments_and_refuse_the_csv_separator(tmp_path):
    good = tmp_path / "s.txt"
    good.write_text("# a comment\nFirst one.\n\n  Second one.  \n")
    assert read_sentences(str(good)) == ["First one.", "Second one."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a|b\n")
    with pytest.raises(ValueError, match="separator"):
        read_sentences(str(bad))


def test_one_voice_writes_ljspeech_layout_and_a_rerun_keeps_existing_wavs(tmp_path, capsys):
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "ljs"
    assert main(["--sentences", str(sentences), "--output_dir", str(out)]) == 0
    assert "2/2" in capsys.readouterr().err  # progress while rendering, not only the final summary
    rows = (out / "metadata.csv").read_text().splitlines()
    assert rows == [f"EL_{i + 1:04d}|{s}|{normalize_text(s)}" for i, s in enumerate(SENTENCES)]
    assert "nine o'clock" in rows[1]  # the normalised column spells numbers out
    for i in (1, 2):
        info = sf.info(str(out / "wavs" / f"EL_{i:04d}.wav"))
        assert (info.samplerate, info.channels) == (22050, 1)
        # Read speech runs at roughly 10-25 characters per second.
        assert 10 < len(SENTENCES[i - 1]) / info.duration < 25
    first = out / "wavs" / "EL_0001.wav"
    stamp = first.stat().st_mtime_ns
    summary = make_corpus(SENTENCES, str(out))
    assert (summary.rendered, summary.skipped) == (0, 2)
    assert first.stat().st_mtime_ns == stamp


def test_a_clip_whose_sentence_changed_is_rendered_again_not_kept(tmp_path, capsys):
    out = tmp_path / "ljs"
    make_corpus(SENTENCES, str(out))
    second = out / "wavs" / "EL_0002.wav"
    before = sf.info(str(second)).duration
    changed = [SENTENCES[0], "Short."]  # same number of lines, the second one edited
    summary = make_corpus(changed, str(out))
    assert (summary.rendered, summary.skipped) == (1, 1)
    assert sf.info(str(second)).duration < before  # the audio says the new sentence
    assert "1 existing clip(s) rendered again" in capsys.readouterr().err
    assert (out / "metadata.csv").read_text().splitlines()[1].startswith("EL_0002|Short.|")


def test_an_interrupted_run_keeps_the_clips_it_recorded_and_redoes_unrecorded_ones(tmp_path):
    out = tmp_path / "ljs"
    make_corpus(SENTENCES, str(out))
    (out / "metadata.csv").unlink()  # as if stopped before the end: only the manifest knows the clips
    assert make_corpus(SENTENCES, str(out)).skipped == 2
    (out / "metadata.csv").unlink()
    (out / "render_manifest.tsv").unlink()  # a WAV nothing records the text of is not trusted
    assert make_corpus(SENTENCES, str(out)).rendered == 2


def test_several_voices_write_one_folder_per_speaker_at_the_requested_format(tmp_path):
    out = tmp_path / "multi"
    summary = make_corpus(SENTENCES[:1], str(out), voices=["joe", "joe,pitch=1.5"], sample_rate=16000, channels=2)
    assert sorted(os.listdir(out)) == ["joe", "joe_pitch_1_5"]
    assert summary.rendered == 2
    base = sf.info(str(out / "joe" / "wavs" / "EL_0001.wav"))
    high = sf.info(str(out / "joe_pitch_1_5" / "wavs" / "EL_0001.wav"))
    assert (base.samplerate, base.channels) == (16000, 2)
    # pitch=1.5 plays the clip 1.5x faster: about 2/3 of the length (Piper's timing varies a little).
    assert 0.55 < high.duration / base.duration < 0.8
    assert (out / "joe_pitch_1_5" / "metadata.csv").read_text().startswith("EL_0001|The red kite")
