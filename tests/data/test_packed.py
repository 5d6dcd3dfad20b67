"""The packed format (same items as the .pt files it was converted from, checks at write and at open),
the .pt start-up index cache, and collate padding that leaves the model's outputs unchanged."""

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import data.dataset as dataset_mod
from data.dataset import INDEX_CACHE, Collate, DataError, EcholancerDataset
from data.dummy import create_dummy_data_files
from data.packed import HEADER, PackedDataset, PackedWriter, convert, main, read_header, verify
from data.sampler import BucketBatchSampler
from utils.config import load_config


@pytest.fixture(scope="module")
def cfg():
    return load_config("config/model_tiny.yaml")


@pytest.fixture()
def corpus(tmp_path, cfg):
    """20 dummy .pt files (4 speakers) and their packed conversion."""
    src, dst = tmp_path / "pt", tmp_path / "packed"
    create_dummy_data_files(str(src), cfg, n_files=20, seed=1)
    convert(str(src), str(dst))
    return str(src), str(dst)


def _same_item(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_packed_items_lengths_and_loader_batches_equal_the_pt_format(corpus, cfg):
    src, dst = corpus
    pt, packed = EcholancerDataset(src, cfg), EcholancerDataset(dst, cfg)
    assert type(pt) is EcholancerDataset and type(packed) is PackedDataset  # chosen from the directory
    assert len(packed) == len(pt) == 20 and packed.lengths() == pt.lengths()
    for i in range(len(pt)):
        _same_item(pt[i], packed[i])
    for a, b in zip(_loader(pt, cfg), _loader(packed, cfg)):
        _same_item(a, b)


def _loader(ds, cfg, batch_size=6, seed=3):
    """Bucketed, padded batches, built as the Echolancer trainer builds its loaders."""
    sampler = BucketBatchSampler(ds.lengths(), batch_size, None, shuffle=True, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=Collate(cfg.model.pad_id))


def test_packed_vq_references_follow_the_same_rule_as_pt(tmp_path):
    vq = load_config("config/model_tiny.yaml", ["model.vq_token_mode=true"])
    create_dummy_data_files(str(tmp_path / "pt"), vq, n_files=12, seed=2)
    convert(str(tmp_path / "pt"), str(tmp_path / "packed"))
    pt, packed = EcholancerDataset(str(tmp_path / "pt"), vq), EcholancerDataset(str(tmp_path / "packed"), vq)
    for epoch in (0, 1):
        pt.set_epoch(epoch)
        packed.set_epoch(epoch)
        for i in range(len(pt)):
            _same_item(pt[i], packed[i])
            assert not torch.equal(packed[i]["ref"], packed[i]["mel"])


def test_a_worker_copy_remaps_the_files_instead_of_carrying_them(corpus, cfg):
    ds = EcholancerDataset(corpus[1], cfg)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # index and token arrays are not in the pickle
    copy = pickle.loads(blob)
    for i in (0, 7, 19):
        _same_item(copy[i], ds[i])


def test_bad_files_fail_the_conversion_naming_the_file_or_are_listed_when_skipped(tmp_path, cfg):
    src = tmp_path / "pt"
    create_dummy_data_files(str(src), cfg, n_files=4)
    torch.save({"text": torch.tensor([1, 2]), "mel": torch.tensor([[1, 2]]), "speaker": 0}, src / "bad.pt")
    with pytest.raises(DataError, match=r"bad\.pt.*'mel' must be 1-D"):
        convert(str(src), str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / HEADER)  # nothing readable is left behind
    h = convert(str(src), str(tmp_path / "b"), skip_invalid=True)
    assert h["count"] == 4 and h["n_skipped"] == 1 and h["skipped"][0][0] == "bad.pt"
    # With a model config, conversion applies the .pt dataset's own checks.
    os.remove(src / "bad.pt")
    tight = load_config("config/model_tiny.yaml", ["model.n_speaker=1"])
    with pytest.raises(DataError, match=r"sample_00002\.pt: 'speaker' is 1; expected \[0, 1\)"):
        convert(str(src), str(tmp_path / "c"), model_cfg=tight)


def test_open_checks_recorded_id_ranges_against_the_config_naming_the_utterance(corpus, cfg):
    _, dst = corpus
    small = load_config("config/model_tiny.yaml", ["model.n_speaker=2"])
    with pytest.raises(DataError, match=r"utterance 'sample_00004'.*'speaker' is 2; expected \[0, 2\)"):
        EcholancerDataset(dst, small)
    with pytest.warns(UserWarning, match="skipped 8 invalid"):
        kept = EcholancerDataset(dst, small, skip_invalid=True)
    assert len(kept) == 12 and set(kept.speakers.tolist()) == {0, 1}
    assert all(kept[i]["speaker"] < 2 for i in range(len(kept)))
    h = read_header(dst)
    codebook = h["ranges"]["mel"][1]  # the largest audio id: a codebook that excludes it must fail
    with pytest.raises(DataError, match=f"'mel' has ids up to {codebook}"):
        EcholancerDataset(dst, load_config("config/model_tiny.yaml", [f"model.codebook_size={codebook}", "model.code_levels=[]"]))
    wide = load_config("config/model_tiny.yaml", ["model.emotion_input_size=768"])
    with pytest.raises(DataError, match=r"emotion vectors have 384 values; expected 768"):
        EcholancerDataset(dst, wide)


def test_truncated_or_mixed_directories_are_refused(corpus, cfg):
    src, dst = corpus
    with open(os.path.join(dst, "mel.bin"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(dst, "mel.bin")) - 2)
    with pytest.raises(DataError, match="mel.bin.*bytes, the header expects"):
        EcholancerDataset(dst, cfg)
    convert(src, dst, overwrite=True)
    torch.save({"text": torch.tensor([1]), "mel": torch.tensor([1]), "speaker": 0}, os.path.join(dst, "x.pt"))
    with pytest.raises(DataError, match="both a packed corpus"):
        EcholancerDataset(dst, cfg)


def test_length_filter_and_missing_emotion_match_the_pt_format(tmp_path, cfg):
    src = tmp_path / "pt"
    os.makedirs(src)
    for i, a in enumerate((5, cfg.dataset.max_audio_len + 1, 9)):
        d = {"text": torch.tensor([1, 2, 3]), "mel": torch.randint(0, 1000, (a,)), "speaker": i % 2}
        if i != 2:
            d["emotion"] = torch.randn(cfg.model.emotion_input_size)
        torch.save(d, src / f"u{i}.pt")
    convert(str(src), str(tmp_path / "p"))
    with pytest.warns(UserWarning) as rec:
        ds = EcholancerDataset(str(tmp_path / "p"), cfg)
    text = " ".join(str(w.message) for w in rec)
    assert "left out 1 utterance" in text and "1 file(s) have no 'emotion'" in text
    assert len(ds) == 2 and ds.lengths() == [5, 9] and torch.equal(ds[1]["emotion"], torch.zeros(384))


def test_writer_stores_large_ids_only_when_asked_and_verify_rereads_everything(tmp_path):
    with pytest.raises(DataError, match="token_dtype='int32'"):
        with PackedWriter(str(tmp_path / "a")) as w:
            w.add([1, 2], [70_000], 0)
    with PackedWriter(str(tmp_path / "b"), token_dtype="int32") as w:
        w.add([1, 2], [70_000, 3], 0, emotion=np.ones(4, np.float32), name="x")
        w.add(torch.tensor([5]), torch.tensor([1]), torch.tensor(1), name="y")
    assert verify(str(tmp_path / "b"))["ranges"]["mel"] == [1, 70_000]
    mm = np.memmap(tmp_path / "b" / "mel.bin", dtype="<i4", mode="r+")
    mm[0] = 80_000  # a changed file: opening trusts the header, verify does not
    mm.flush()
    del mm
    with pytest.raises(DataError, match="mel ids span"):
        verify(str(tmp_path / "b"))


def test_cli_converts_and_verifies(tmp_path, cfg, capsys):
    create_dummy_data_files(str(tmp_path / "pt"), cfg, n_files=3)
    assert main(["convert", str(tmp_path / "pt"), str(tmp_path / "p"), "--config", "config/model_tiny.yaml"]) == 0
    assert main(["verify", str(tmp_path / "p")]) == 0
    assert "OK, 3 utterances" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "pt"), str(tmp_path / "p")]) == 2  # exists: refuses to overwrite


# ---- the .pt start-up index cache --------------------------------------------------------------------


def _count_loads(monkeypatch):
    calls = []
    real = dataset_mod.load_file_dict

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(dataset_mod, "load_file_dict", counting)
    return calls


def test_pt_start_up_reads_only_new_or_changed_files(tmp_path, cfg, monkeypatch):
    create_dummy_data_files(str(tmp_path), cfg, n_files=6)
    calls = _count_loads(monkeypatch)
    first = EcholancerDataset(str(tmp_path), cfg)
    assert len(calls) == 6 and (tmp_path / INDEX_CACHE).exists()
    calls.clear()
    again = EcholancerDataset(str(tmp_path), cfg)
    assert calls == [] and again.lengths() == first.lengths() and again.speakers == first.speakers
    torch.save({"text": torch.tensor([1, 2]), "mel": torch.arange(33), "speaker": 3}, tmp_path / "sample_00002.pt")
    changed = EcholancerDataset(str(tmp_path), cfg)
    assert calls == ["sample_00002.pt"] and changed.audio_lens[2] == 33 and changed.speakers[2] == 3


def test_cached_files_get_the_same_config_checks_and_messages(tmp_path, cfg, monkeypatch):
    create_dummy_data_files(str(tmp_path), cfg, n_files=6)
    EcholancerDataset(str(tmp_path), cfg)  # builds the cache
    for over in (["model.n_speaker=2"], ["model.codebook_size=10", "model.code_levels=[]"], ["model.vocab_size=3"],
                 ["model.emotion_input_size=8"]):
        other = load_config("config/model_tiny.yaml", over)
        with pytest.raises(DataError) as uncached:
            EcholancerDataset(str(tmp_path), other, use_index_cache=False)
        calls = _count_loads(monkeypatch)
        with pytest.raises(DataError) as cached:
            EcholancerDataset(str(tmp_path), other)
        assert calls == [] and str(cached.value) == str(uncached.value), over


def test_invalid_files_are_never_cached(tmp_path, cfg, monkeypatch):
    create_dummy_data_files(str(tmp_path), cfg, n_files=3)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="skipped 1"):
        EcholancerDataset(str(tmp_path), cfg, skip_invalid=True)
    calls = _count_loads(monkeypatch)
    with pytest.raises(DataError, match="junk.pt"):
        EcholancerDataset(str(tmp_path), cfg)
    assert calls == ["junk.pt"]


# ---- collate padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vq", [False, True])
def test_padding_to_a_multiple_does_not_change_the_model_outputs(tmp_path, vq):
    from model.echolancer import Echolancer
    from model.loss import EcholancerLoss

    over = ["model.encoder.dropout=0.0", "model.decoder.dropout=0.0"] + (["model.vq_token_mode=true"] if vq else [])
    c = load_config("config/model_tiny.yaml", over)
    create_dummy_data_files(str(tmp_path), c, n_files=4, min_text_len=7, max_text_len=13, seed=4)
    ds = EcholancerDataset(str(tmp_path), c)
    items = [ds[i] for i in range(3)]
    torch.manual_seed(0)
    model = Echolancer(c.model).eval()
    crit = EcholancerLoss()
    keys = ("speakers", "texts", "src_lens", "mels", "mel_lens", "em_hidden")
    keys += ("vq_tokens", "vq_token_lens") if vq else ()
    exact, padded = Collate(model.pad_id, pad_multiple=1)(items), Collate(model.pad_id, pad_multiple=16)(items)
    assert padded["mels"].shape[1] % 16 == 0 and padded["mels"].shape[1] > exact["mels"].shape[1]
    if vq:
        assert padded["vq_tokens"].shape[1] % 16 == 0 and padded["vq_tokens"].shape[1] > exact["vq_tokens"].shape[1]
    with torch.no_grad():
        a = model(*[exact[k] for k in keys])
        b = model(*[padded[k] for k in keys])
        la, lb = crit(a).total, crit(b).total
    T = a.logits.shape[1]
    valid = ~a.tgt_pad
    torch.testing.assert_close(b.logits[:, :T][valid], a.logits[valid], rtol=1e-5, atol=1e-5)
    assert b.tgt_pad[:, T:].all()
    torch.testing.assert_close(lb, la, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["pt", "packed"])
def test_set_epoch_reaches_persistent_workers(tmp_path, fmt):
    vq = load_config("config/model_tiny.yaml", ["model.vq_token_mode=true"])
    create_dummy_data_files(str(tmp_path / "pt"), vq, n_files=12, seed=5)
    if fmt == "packed":
        convert(str(tmp_path / "pt"), str(tmp_path / "packed"))
    ds = EcholancerDataset(str(tmp_path / fmt), vq)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    refs = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        refs[epoch] = [item["ref"] for item in loader]
        assert all(torch.equal(r, ds[i]["ref"]) for i, r in enumerate(refs[epoch]))
    assert any(not torch.equal(a, b) for a, b in zip(refs[0], refs[1]))  # the epoch changed the choices
