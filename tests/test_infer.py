"""infer.py end to end: checkpoint file or directory -> token/gate files and metadata; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import infer
from model.echolancer import Echolancer
from pipeline import PipelineError
from utils.char_tokenizer import CharTokenizer
from utils.checkpoint import checkpoint_name
from utils.config import TrainConfig, config_to_dict, load_config

TINY = "config/model_tiny.yaml"



def save_checkpoint(path, step: int = 7, seed: int = 0, overrides: tuple[str, ...] = ()) -> Echolancer:
    cfg = load_config(TINY, list(overrides))
    torch.manual_seed(seed)
    model = Echolancer.from_config(cfg).eval()
    torch.save(
        {
            "format_version": 1,
            "model": model.state_dict(),
            "model_config": config_to_dict(cfg),
            "train_config": config_to_dict(TrainConfig()),
            "tokenizer": CharTokenizer().to_dict(),
            "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id,
                               "eos_id": model.eos_id, "pad_id": model.pad_id},
            "step": step,
        },
        path,
    )
    return model


def run_infer(*argv: str) -> list[dict]:
    """The command's work, in process: the metadata of every sentence written."""
    return infer.run(infer.parse_args(["--device", "cpu", "--max_length", "16", *argv]))


def test_checkpoint_file_to_token_files_and_metadata(tmp_path):
    model = save_checkpoint(tmp_path / "model.pt", step=42)
    out = tmp_path / "out"
    metas = run_infer("--checkpoint", str(tmp_path / "model.pt"), "--text", "Dr. Smith has 2 cats.",
                      "--speaker_id", "3", "--temperature", "0", "--output_dir", str(out))
    assert len(metas) == 1
    meta = json.loads((out / "utt_0000.json").read_text())
    assert meta["text"] == "Dr. Smith has 2 cats."
    assert meta["normalized_text"] == "doctor smith has two cats."
    assert meta["speaker"] == 3 and meta["checkpoint_step"] == 42
    assert meta["sampling"]["temperature"] == 0.0 and meta["sampling"]["max_length"] == 16
    assert meta["hit_max_length"] is True and meta["length"] == 16  # an untrained model never stops
    assert meta["batch_tokens_per_s"] > 0 and meta["batch_time_s"] > 0

    tokens = np.load(out / "utt_0000.tokens.npy")
    assert torch.equal(torch.load(out / "utt_0000.tokens.pt", weights_only=True), torch.from_numpy(tokens))
    gate = np.load(out / "utt_0000.gate.npy")
    assert torch.equal(torch.load(out / "utt_0000.gate.pt", weights_only=True), torch.from_numpy(gate))
    assert ((gate >= 0) & (gate <= 1)).all()

    # The files hold exactly what greedy generation gives for this text and speaker.
    tok = CharTokenizer()
    ids = torch.tensor([tok.encode("Dr. Smith has 2 cats.")])
    ref = model.infer(torch.tensor([3]), ids, torch.tensor([ids.shape[1]]), max_length=16, temperature=0.0)
    assert tokens.tolist() == ref.tokens[0, : meta["length"]].tolist()


def test_checkpoint_directory_and_text_file_in_batches(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_checkpoint(ckpt / checkpoint_name(100), step=100, seed=0)
    save_checkpoint(ckpt / checkpoint_name(300), step=300, seed=1)
    sentences = tmp_path / "s.txt"
    sentences.write_text("First sentence.\n\nSecond one!\nA third, longer sentence here.\n", encoding="utf-8")
    out = tmp_path / "out"
    metas = run_infer("--checkpoint", str(ckpt), "--text_file", str(sentences), "--batch_size", "2",
                      "--output_dir", str(out))
    assert [m["text"] for m in metas] == ["First sentence.", "Second one!", "A third, longer sentence here."]
    assert all(m["checkpoint_step"] == 300 and m["checkpoint"].endswith(checkpoint_name(300)) for m in metas)
    for i in range(3):
        assert (out / f"utt_{i:04d}.json").is_file() and (out / f"utt_{i:04d}.tokens.npy").is_file()
        assert (out / f"utt_{i:04d}.gate.pt").is_file()


def test_same_seed_same_tokens_different_seed_different_tokens(tmp_path):
    save_checkpoint(tmp_path / "m.pt")

    def tokens(seed: str, name: str):
        run_infer("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello there.", "--seed", seed,
                  "--temperature", "1.0", "--output_dir", str(tmp_path / name))
        return np.load(tmp_path / name / "utt_0000.tokens.npy")

    a, b, c = tokens("1", "a"), tokens("1", "b"), tokens("2", "c")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_raw_state_dict_with_model_config(tmp_path):
    model = save_checkpoint(tmp_path / "full.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    metas = run_infer("--checkpoint", str(tmp_path / "raw.pt"), "--model_config", TINY, "--text", "Hi there.",
                      "--output_dir", str(tmp_path / "out"))
    assert metas[0]["checkpoint_step"] is None and metas[0]["length"] > 0


def expect_error(*argv: str) -> str:
    """Run the command; it must exit 2 with exactly one line on stderr, no traceback. Returns that line."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = infer.main(["--device", "cpu", "--max_length", "16", *argv])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("infer.py: error: "), err.getvalue()
    return lines[0]


def test_unknown_speaker_id_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m.pt")
    msg = expect_error("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello.", "--speaker_id", "9",
                       "--output_dir", str(tmp_path / "o"))
    assert "--speaker_id 9 is not a speaker of this model: allowed ids are 0..3" in msg
    assert not (tmp_path / "o").exists()


def test_text_without_speakable_characters_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m.pt")
    sentences = tmp_path / "s.txt"
    sentences.write_text("Fine.\n?!...\n", encoding="utf-8")
    msg = expect_error("--checkpoint", str(tmp_path / "m.pt"), "--text_file", str(sentences),
                       "--output_dir", str(tmp_path / "o"))
    assert f"{sentences} line 2: '?!...' has no speakable characters" in msg


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    model = save_checkpoint(tmp_path / "m.pt", overrides=("model.decoder.layer=3",))
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    msg = expect_error("--checkpoint", str(tmp_path / "raw.pt"), "--model_config", TINY, "--text", "Hello.")
    assert "do not fit the model built from config/model_tiny.yaml" in msg and "dec_layers.2." in msg
    msg = expect_error("--checkpoint", str(tmp_path / "raw.pt"), "--text", "Hello.")
    assert "raw state dict without a model config" in msg


def test_front_ends_give_a_16_bit_wav_of_tokens_times_hop_samples(tmp_path):
    """Untrained but real exported components: BERT (MiniLM), pre-encoder, ISTFTNet, through pipeline.py."""
    import soundfile as sf

    from bertfe import find_packaged_minilm
    from model.istftnet import ISTFT, ISTFTNetGenerator
    from model.istftnet_artifact import export_istftnet
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config import AudioConfig
    from utils.config.preencoder import PreEncoderConfig
    from utils.config.vocoder import GeneratorConfig

    torch.manual_seed(0)
    pe_cfg = load_config("config/preencoder_tiny.yaml", schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pe_cfg), pe_cfg, str(tmp_path / "pe"))
    gen = ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=32), n_mels=80).eval()
    export_istftnet(gen, ISTFT(16, 4), AudioConfig(), str(tmp_path / "voc"), 22050, devices=["cpu"])
    save_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    metas = run_infer("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello there.", "--max_length", "12",
                      "--bert_model", find_packaged_minilm(), "--pre_encoder_dir", str(tmp_path / "pe"),
                      "--istftnet_dir", str(tmp_path / "voc"), "--output_dir", str(out))
    meta = metas[0]
    assert meta["files"]["wav"] == "utt_0000.wav" and meta["vocoder"] == "istftnet" and meta["sample_rate"] == 22050
    info = sf.info(str(out / "utt_0000.wav"))
    assert info.subtype == "PCM_16" and info.samplerate == 22050
    assert info.frames == meta["length"] * 256 and meta["length"] == 12


def test_the_inference_export_alone_and_no_text_speaks_the_default_sentence(tmp_path):
    # Before: `python infer.py --checkpoint CKPT` failed (no text), and there was no inference export.
    from model.pretrained import export_echolancer, load_echolancer

    save_checkpoint(tmp_path / "model.pt", step=5)
    loaded = load_echolancer(tmp_path / "model.pt")
    export_echolancer(loaded.model, loaded.model_config, loaded.tokenizer, str(tmp_path / "export"), loaded.step)
    metas = run_infer("--checkpoint", str(tmp_path / "export"), "--output_dir", str(tmp_path / "out"))
    assert [m["text"] for m in metas] == [infer.DEFAULT_TEXT]
    assert metas[0]["checkpoint"].endswith("echolancer.pt") and metas[0]["checkpoint_step"] == 5


def test_an_unexpected_failure_in_a_stage_keeps_its_traceback(tmp_path, monkeypatch):
    # Before: every exception in the chain became one line ("infer.py: error: ..."), bugs included.
    save_checkpoint(tmp_path / "model.pt")

    def broken(*args, **kwargs):
        raise TypeError("a bug in generation")

    monkeypatch.setattr(Echolancer, "infer", broken)
    with pytest.raises(PipelineError, match="a bug in generation") as e:
        infer.main(["--device", "cpu", "--checkpoint", str(tmp_path / "model.pt"), "--output_dir", str(tmp_path / "out")])
    assert e.value.bug and isinstance(e.value.__cause__, TypeError)


# ---- batch synthesis from a file ----------------------------------------------------------------


def write_lines(path, *objects) -> str:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects), encoding="utf-8")
    return str(path)


def greedy_tokens(model, text: str, speaker: int) -> list[int]:
    ids = torch.tensor([CharTokenizer().encode(text)])
    return model.infer(torch.tensor([speaker]), ids, torch.tensor([ids.shape[1]]), max_length=16,
                       temperature=0.0).tokens[0].tolist()


def test_jsonl_lines_are_spoken_in_batches_by_their_own_speaker_into_their_own_files(tmp_path):
    model = save_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():  # an untrained model's speaker embeddings are too small to change its tokens
        model.speaker_embed.weight.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(0))
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**ck, "model": model.state_dict()}, tmp_path / "m.pt")
    lines = write_lines(tmp_path / "lines.jsonl",
                        {"text": "Hello there.", "speaker": 2, "id": "greeting"},
                        "",  # blank lines are skipped, and do not shift the numbering
                        {"text": "Hello there.", "speaker": 0},
                        {"text": "A third one.", "name": "third"})
    out = tmp_path / "out"
    metas = run_infer("--checkpoint", str(tmp_path / "m.pt"), "--text_file", lines, "--speaker_id", "1",
                      "--batch_size", "2", "--temperature", "0", "--output_dir", str(out))
    assert sorted(p.name for p in out.glob("*.json")) == ["greeting.json", "third.json", "utt_0001.json"]
    assert [m["speaker"] for m in metas] == [2, 0, 1]  # the third line has no speaker: --speaker_id
    assert [m["source"]["line"] for m in metas] == [1, 3, 4]
    # Each line's tokens are what its own speaker gives alone, although it was generated in a batch
    # with another speaker; the same text by speakers 2 and 0 differs, so the speaker was used.
    got = {stem: np.load(out / f"{stem}.tokens.npy").tolist() for stem in ("greeting", "utt_0001", "third")}
    assert got["greeting"] == greedy_tokens(model, "Hello there.", 2)
    assert got["utt_0001"] == greedy_tokens(model, "Hello there.", 0)
    assert got["third"] == greedy_tokens(model, "A third one.", 1)
    assert got["greeting"] != got["utt_0001"]


def test_a_text_file_gives_one_16_bit_wav_per_non_empty_line(tmp_path):
    import soundfile as sf

    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config.preencoder import PreEncoderConfig

    torch.manual_seed(0)
    pe_cfg = load_config("config/preencoder_tiny.yaml", schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pe_cfg), pe_cfg, str(tmp_path / "pe"))
    save_checkpoint(tmp_path / "m.pt")
    lines = write_lines(tmp_path / "lines.txt", "One.", "", "   ", "Two words.", "Three more words.")
    out = tmp_path / "out"
    metas = run_infer("--checkpoint", str(tmp_path / "m.pt"), "--text_file", lines, "--max_length", "6",
                      "--pre_encoder_dir", str(tmp_path / "pe"), "--output_dir", str(out))
    assert sorted(p.name for p in out.glob("*.wav")) == ["utt_0000.wav", "utt_0001.wav", "utt_0002.wav"]
    assert [m["text"] for m in metas] == ["One.", "Two words.", "Three more words."]
    for m in metas:
        info = sf.info(str(out / m["files"]["wav"]))
        assert info.subtype == "PCM_16" and info.frames == m["length"] * 256 and m["vocoder"] == "griffin_lim"


@pytest.mark.parametrize(("line", "expected"), [
    ({"speaker": 1}, "'text' is required"),
    ({"text": "Hi.", "voice": 1}, "unknown key(s) 'voice'; allowed keys: text, speaker, id, name"),
    ({"text": "Hi.", "speaker": 4}, "speaker 4 is not a speaker of this model: allowed ids are 0..3"),
    ({"text": "Hi.", "speaker": -1}, "speaker -1 is not a speaker of this model: allowed ids are 0..3"),
    ({"text": "Hi.", "speaker": "2"}, "'speaker' must be an integer speaker id"),
    ({"text": "Hi.", "id": "../escape"}, "cannot be a file name"),
    ({"text": "Hi.", "id": "first"}, "file name 'first' is already taken by line 1"),
    ('{"text": "Hi."', "not valid JSON"),
])
def test_a_bad_jsonl_line_is_one_error_naming_its_line_before_any_synthesis(tmp_path, monkeypatch, line, expected):
    save_checkpoint(tmp_path / "m.pt")

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesis started before the file was checked")

    monkeypatch.setattr(infer, "build_synthesizer", no_synthesis)
    lines = write_lines(tmp_path / "lines.jsonl", {"text": "Fine.", "id": "first"}, line)
    msg = expect_error("--checkpoint", str(tmp_path / "m.pt"), "--text_file", lines,
                       "--output_dir", str(tmp_path / "o"))
    assert f"{lines} line 2: " in msg and expected in msg
    assert not (tmp_path / "o").exists()


def test_a_file_run_refuses_to_replace_earlier_outputs_unless_overwrite(tmp_path):
    save_checkpoint(tmp_path / "m.pt")
    lines = write_lines(tmp_path / "lines.txt", "First.", "Second.")
    out = tmp_path / "out"
    argv = ("--checkpoint", str(tmp_path / "m.pt"), "--text_file", lines, "--output_dir", str(out), "--seed", "1")
    assert infer.main(["--device", "cpu", "--max_length", "16", *argv]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    msg = expect_error(*argv, "--seed", "2")
    assert f"--output_dir {out} already has utt_0000.tokens.npy and 9 more file(s)" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing was touched

    assert infer.main(["--device", "cpu", "--max_length", "16", *argv, "--seed", "2", "--overwrite"]) == 0
    assert (out / "utt_0000.tokens.npy").read_bytes() != before["utt_0000.tokens.npy"]  # replaced: seed 2
    # --text runs keep replacing their utt_NNNN files, as they always did.
    assert infer.main(["--device", "cpu", "--max_length", "16", "--checkpoint", str(tmp_path / "m.pt"),
                       "--text", "Another.", "--output_dir", str(out)]) == 0
    assert json.loads((out / "utt_0000.json").read_text())["text"] == "Another."


def test_a_missing_checkpoint_is_one_line_and_exit_status_2(tmp_path):
    msg = expect_error("--checkpoint", str(tmp_path / "nope.pt"), "--text", "Hello.")
    assert msg == f"infer.py: error: {tmp_path / 'nope.pt'}: checkpoint file not found"


# ---- --stream ------------------------------------------------------------------------------------


def export_front_ends(tmp_path) -> tuple[str, str]:
    """Random tiny pre-encoder and ISTFTNet exports (what --pre_encoder_dir / --istftnet_dir take)."""
    from model.istftnet import ISTFT, ISTFTNetGenerator
    from model.istftnet_artifact import export_istftnet
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config import AudioConfig
    from utils.config.preencoder import PreEncoderConfig
    from utils.config.vocoder import GeneratorConfig

    torch.manual_seed(0)
    pe_cfg = load_config("config/preencoder_tiny.yaml", schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pe_cfg), pe_cfg, str(tmp_path / "pe"))
    gen = ISTFTNetGenerator(GeneratorConfig(upsample_initial_channel=16), n_mels=80).eval()
    export_istftnet(gen, ISTFT(16, 4), AudioConfig(), str(tmp_path / "voc"), 22050, devices=["cpu"])
    return str(tmp_path / "pe"), str(tmp_path / "voc")


def test_stream_writes_the_same_files_as_one_shot_and_prints_time_to_first_audio(tmp_path, capsys):
    import soundfile as sf

    save_checkpoint(tmp_path / "m.pt")
    pe, voc = export_front_ends(tmp_path)
    common = ("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello there.", "--max_length", "40",
              "--temperature", "0", "--pre_encoder_dir", pe, "--istftnet_dir", voc)
    run_infer(*common, "--output_dir", str(tmp_path / "one"))
    capsys.readouterr()
    metas = run_infer(*common, "--output_dir", str(tmp_path / "st"), "--stream", "--chunk_tokens", "8")
    printed = capsys.readouterr().out
    assert "streamed: first audio after" in printed and "5 chunk(s) of 8 tokens" in printed
    meta = metas[0]
    assert meta["stream"]["chunk_tokens"] == 8 and meta["stream"]["chunks"] == 5
    assert 0 < meta["stream"]["first_audio_s"] <= meta["batch_time_s"]
    for name in ("utt_0000.tokens.npy", "utt_0000.gate.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "st" / name))
    one, rate = sf.read(str(tmp_path / "one" / "utt_0000.wav"), dtype="int16")
    streamed, _ = sf.read(str(tmp_path / "st" / "utt_0000.wav"), dtype="int16")
    assert rate == 22050 and one.shape == streamed.shape == (40 * 256,)
    assert np.abs(one.astype(int) - streamed.astype(int)).max() <= 1  # the same audio, up to the 16-bit rounding


def test_stream_with_griffin_lim_writes_a_wav_of_the_right_length(tmp_path):
    import soundfile as sf

    save_checkpoint(tmp_path / "m.pt")
    pe, _ = export_front_ends(tmp_path)
    run_infer("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello.", "--max_length", "20",
              "--pre_encoder_dir", pe, "--output_dir", str(tmp_path / "o"), "--stream")
    assert sf.info(str(tmp_path / "o" / "utt_0000.wav")).frames == 20 * 256


@pytest.mark.parametrize("extra, expected", [
    (("--stream", "--chunk_tokens", "0"), "infer.py: error: --chunk_tokens must be >= 1 (codec tokens per audio chunk), got 0"),
    (("--chunk_tokens", "8"), "infer.py: error: --chunk_tokens 8 is for --stream runs; add --stream (or leave it out)"),
    (("--stream",), "infer.py: error: --stream needs --pre_encoder_dir"),
])
def test_bad_stream_flags_are_one_line_errors(tmp_path, extra, expected):
    save_checkpoint(tmp_path / "m.pt")
    msg = expect_error("--checkpoint", str(tmp_path / "m.pt"), "--text", "Hello.", "--output_dir",
                       str(tmp_path / "o"), *extra)
    assert msg.startswith(expected)
    assert not (tmp_path / "o").exists()  # refused before anything was written
