"""The .pt dataset: validation errors that name file/key/expectation, safe loading, collate padding."""

import os
import pickle

import pytest
import torch

from data.dataset import Collate, DataError, EcholancerDataset
from data.dummy import create_dummy_data_files
from utils.config import load_config


@pytest.fixture(scope="module")
def cfg():
    return load_config("config/model_tiny.yaml")


def _good(cfg, t=5, a=7, speaker=1, emotion=True):
    m = cfg.model
    d = {"text": torch.randint(1, m.vocab_size, (t,)), "mel": torch.randint(0, m.codebook_size, (a,)),
         "speaker": speaker}
    if emotion:
        d["emotion"] = torch.randn(m.emotion_input_size)
    return d


def _write(dir_, name, obj):
    os.makedirs(dir_, exist_ok=True)
    torch.save(obj, os.path.join(dir_, name))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, m: d.pop("mel"), "missing key 'mel'"),
        (lambda d, m: d.update(text=torch.randn(5)), "'text' must be an integer tensor"),
        (lambda d, m: d.update(mel=torch.zeros(2, 3, dtype=torch.long)), "'mel' must be 1-D"),
        (lambda d, m: d.update(text=torch.zeros(0, dtype=torch.long)), "'text' is empty"),
        (lambda d, m: d.update(mel=torch.tensor([0, m.codebook_size])), r"expected ids in \[0, 1000\)"),
        (lambda d, m: d.update(speaker=m.n_speaker), r"'speaker' is 4; expected \[0, 4\)"),
        (lambda d, m: d.update(speaker=torch.tensor([1, 2])), "one-element integer tensor"),
        (lambda d, m: d.update(emotion=torch.randn(7)), r"'emotion' has shape \(7,\); expected \(384,\)"),
    ],
)
def test_malformed_files_fail_naming_file_key_and_expectation(tmp_path, cfg, change, message):
    d = _good(cfg)
    change(d, cfg.model)
    _write(tmp_path, "bad_0001.pt", d)
    with pytest.raises(DataError, match=message) as e:
        EcholancerDataset(str(tmp_path), cfg)
    assert "bad_0001.pt" in str(e.value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_rejected_and_not_run(tmp_path, cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"text": _RunsCode()}, f)
    with pytest.raises(DataError, match="evil.pt.*weights_only"):
        EcholancerDataset(str(tmp_path), cfg)
    assert not (tmp_path / "pwned").exists()


def test_skip_invalid_counts_bad_and_too_long_files(tmp_path, cfg):
    _write(tmp_path, "a.pt", _good(cfg))
    _write(tmp_path, "b.pt", _good(cfg, a=cfg.dataset.max_audio_len + 1))
    (tmp_path / "c.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        ds = EcholancerDataset(str(tmp_path), cfg, skip_invalid=True)
    assert len(ds) == 1 and ds.too_long == 1 and ds.skipped[0][0].endswith("c.pt")


def test_missing_emotion_defaults_to_zeros_with_one_warning(tmp_path, cfg):
    for i in range(3):
        _write(tmp_path, f"s{i}.pt", _good(cfg, emotion=False, speaker=torch.tensor(2)))
    with pytest.warns(UserWarning, match="3 file.*no 'emotion'") as rec:
        ds = EcholancerDataset(str(tmp_path), cfg)
    assert len([w for w in rec if "emotion" in str(w.message)]) == 1
    item = ds[0]
    assert torch.equal(item["emotion"], torch.zeros(cfg.model.emotion_input_size)) and item["speaker"] == 2


def test_collate_pads_text_with_0_and_audio_with_model_pad_id(tmp_path, cfg):
    _write(tmp_path, "a.pt", _good(cfg, t=3, a=4))
    _write(tmp_path, "b.pt", _good(cfg, t=6, a=9))
    ds = EcholancerDataset(str(tmp_path), cfg)
    pad_id = cfg.model.codebook_size + 2
    b = Collate(pad_id)([ds[0], ds[1]])
    assert b["src_lens"].tolist() == [3, 6] and b["mel_lens"].tolist() == [4, 9]
    assert (b["texts"][0, 3:] == 0).all() and (b["texts"][0, :3] > 0).all()
    assert (b["mels"][0, 4:] == pad_id).all() and (b["mels"][1, :9] < cfg.model.codebook_size).all()
    assert (b["mels"][1, 9:] == pad_id).all() and (b["texts"][1, 6:] == 0).all()
    assert b["em_hidden"].shape == (2, cfg.model.emotion_input_size)
    # Lengths are rounded up to a multiple of 16 by default (few shapes for torch.compile), or not at all.
    assert b["texts"].shape == (2, 16) and b["mels"].shape == (2, 16)
    exact = Collate(pad_id, pad_multiple=1)([ds[0], ds[1]])
    assert exact["texts"].shape == (2, 6) and exact["mels"].shape == (2, 9)
    assert torch.equal(exact["mels"], b["mels"][:, :9]) and torch.equal(exact["texts"], b["texts"][:, :6])


def test_vq_token_mode_reference_is_another_utterance_of_the_same_speaker(tmp_path, cfg):
    vq = load_config("config/model_tiny.yaml", ["model.vq_token_mode=true"])
    create_dummy_data_files(str(tmp_path), vq, n_files=8)
    ds = EcholancerDataset(str(tmp_path), vq)
    for i in range(len(ds)):
        ref = ds[i]["ref"]
        same = [j for j in ds.by_speaker[ds.speakers[i]] if j != i]
        assert any(torch.equal(ref, ds[j]["mel"]) for j in same)
        assert not torch.equal(ref, ds[i]["mel"])
    # A file's own ref_mel wins; a lone speaker without one is an error.
    lone = tmp_path / "lone"
    _write(lone, "x.pt", {**_good(vq, speaker=3), "ref_mel": torch.tensor([5, 6, 7])})
    assert EcholancerDataset(str(lone), vq)[0]["ref"].tolist() == [5, 6, 7]
    _write(lone, "y.pt", _good(vq, speaker=2))
    with pytest.raises(DataError, match="y.pt: vq_token_mode needs a reference"):
        EcholancerDataset(str(lone), vq)


def test_dummy_files_are_valid_for_the_configured_sizes(tmp_path, cfg):
    paths = create_dummy_data_files(str(tmp_path), cfg, n_files=6)
    ds = EcholancerDataset(str(tmp_path), cfg)
    assert len(ds) == len(paths) == 6 and set(ds.speakers) <= set(range(cfg.model.n_speaker))


def test_the_trainers_loader_pieces_yield_padded_bucketed_batches(tmp_path):
    from torch.utils.data import DataLoader

    from data import BucketBatchSampler, Collate
    from utils.config import load_config

    cfg = load_config("config/model_tiny.yaml")
    create_dummy_data_files(str(tmp_path), cfg, n_files=10, seed=0)
    ds = EcholancerDataset(str(tmp_path), cfg)
    # Built as the Echolancer trainer builds its loaders.
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.lengths(), 4, None, shuffle=True, seed=0),
                        collate_fn=Collate(cfg.model.pad_id, pad_multiple=16))
    seen = 0
    for batch in loader:
        B, T = batch["mels"].shape
        assert T == -(-int(batch["mel_lens"].max()) // 16) * 16  # the longest, rounded up to 16
        beyond = torch.arange(T)[None] >= batch["mel_lens"][:, None]
        assert (batch["mels"][beyond] == cfg.model.pad_id).all()  # audio padded with the model's PAD
        assert (batch["mels"][~beyond] < cfg.model.codebook_size).all()
        seen += B
    assert seen == 10
