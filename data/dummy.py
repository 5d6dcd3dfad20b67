"""Random but valid data files, for smoke tests and the ``--create_dummy`` flag of ``train.py``.

The audio length is tied to the text length (about ``tokens_per_char`` codec tokens per character,
with jitter), like real speech, so the bucketed sampler and the length filter see realistic spreads.
"""

from __future__ import annotations

import os

import torch

from utils.config import ModelConfig


def create_dummy_data_files(
    data_dir: str,
    model_cfg: ModelConfig,
    n_files: int = 32,
    min_text_len: int = 5,
    max_text_len: int = 40,
    tokens_per_char: float = 4.0,
    with_emotion: bool = True,
    seed: int = 0,
) -> list[str]:
    """Write ``n_files`` valid ``sample_XXXXX.pt`` files into ``data_dir`` (created).

    Text ids avoid the PAD id 0; audio lengths stay within ``dataset.max_audio_len``; speakers
    cycle through ``[0, n_speaker)``; in ``vq_token_mode`` every speaker gets at least two files.

    Returns:
        the paths written.
    """
    m = model_cfg.model
    if m.vocab_size < 2:
        raise ValueError("model.vocab_size must be >= 2 to write dummy text (id 0 is PAD)")
    os.makedirs(data_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    max_audio = model_cfg.dataset.max_audio_len
    max_text = min(max_text_len, model_cfg.dataset.max_text_len)
    paths = []
    for i in range(n_files):
        t_len = int(torch.randint(min(min_text_len, max_text), max_text + 1, (1,), generator=g))
        jitter = 0.75 + 0.5 * float(torch.rand(1, generator=g))
        a_len = max(1, min(max_audio, int(t_len * tokens_per_char * jitter)))
        sample = {
            "text": torch.randint(1, m.vocab_size, (t_len,), generator=g),
            "mel": torch.randint(0, m.codebook_size, (a_len,), generator=g),
            # Pairs of consecutive files share a speaker, so vq_token_mode always has a reference.
            "speaker": (i // 2) % m.n_speaker,
        }
        if with_emotion:
            sample["emotion"] = torch.randn(m.emotion_input_size, generator=g)
        path = os.path.join(data_dir, f"sample_{i:05d}.pt")
        torch.save(sample, path)
        paths.append(path)
    return paths
