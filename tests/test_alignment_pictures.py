"""scripts/alignment_pictures.py: pictures and diagonality of held-out sentences from a checkpoint."""

import json
import os

import torch
from PIL import Image

from model.echolancer import Echolancer
from scripts.alignment_pictures import main
from scripts.make_corpus import make_corpus
from utils.char_tokenizer import CharTokenizer
from utils.config import TrainConfig, config_to_dict, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pictures_of_an_untrained_model(tmp_path):
    from model.preencoder import PreEncoder
    from model.preencoder_artifact import export_preencoder
    from utils.config.preencoder import PreEncoderConfig

    make_corpus(["The green door was locked.", "A cold wind blew."], str(tmp_path / "eval"))
    cfg = load_config(os.path.join(ROOT, "config", "model_tiny.yaml"))
    torch.manual_seed(0)
    model = Echolancer.from_config(cfg)
    torch.save({"format_version": 1, "model": model.state_dict(), "model_config": config_to_dict(cfg),
                "train_config": config_to_dict(TrainConfig()), "tokenizer": CharTokenizer().to_dict(),
                "special_tokens": {"codebook_size": model.codebook_size, "bos_id": model.bos_id,
                                   "eos_id": model.eos_id, "pad_id": model.pad_id}, "step": 7}, tmp_path / "m.pt")
    pcfg = load_config(os.path.join(ROOT, "config", "preencoder_tiny.yaml"), ["model.generator.downsample=2"],
                       schema=PreEncoderConfig)
    export_preencoder(PreEncoder.from_config(pcfg), pcfg, str(tmp_path / "pre"))
    assert main(["--checkpoint", str(tmp_path / "m.pt"), "--pre_encoder_dir", str(tmp_path / "pre"),
                 "--reference_dir", str(tmp_path / "eval"), "--output_dir", str(tmp_path / "out"), "--limit", "2"]) == 0
    report = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert report["step"] == 7 and len(report["sentences"]) == 2
    for s in report["sentences"]:
        assert len(s["diagonality_per_layer"]) == cfg.model.decoder.layer
        assert all(0.0 <= d <= 1.0 for d in s["diagonality_per_layer"])
        w, h = Image.open(s["png"]).size
        # (text tokens x layers + separators) rows and (audio tokens + EOS) columns, each pixel 2 x 2.
        layers = cfg.model.decoder.layer
        assert (w, h) == (2 * (s["audio_tokens"] + 1), 2 * (layers * s["text_tokens"] + layers - 1))
