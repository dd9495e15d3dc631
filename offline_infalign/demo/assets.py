"""Assets of the embedded demo: a tiny review-writing causal LM, its prompts, and a sentiment reward.

- `demo_model_dir()` is a small Llama-architecture LM (2 layers, hidden 128, 214 words, 0.36M parameters, 1.4 MB
  of safetensors) trained on generated restaurant/cafe/hotel reviews. The package ships it trained
  (`demo/data/demo-lm/`, an ordinary Hugging Face folder: `AutoModelForCausalLM.from_pretrained(path)` and
  `AutoTokenizer.from_pretrained(path)` load it like any real model), so a fresh machine does not train it. The
  code that trained it is here: `python -m offline_infalign.demo.assets` retrains it into the package (67 s of
  one CPU core) and its marker records the recipe's hash, every step's training loss and the weights' sha256;
  tests/test_demo_assets.py checks the shipped model against the recipe. Another recipe (`train_steps`, or a
  changed corpus) is trained at first use and cached. Reviews mix positive, neutral, negative and mixed tones, so
  samples vary in sentiment.
- `demo_prompts(split)` gives plain-text prompts like "review of the cozy cafe near the station:"; the train and
  test splits are disjoint.
- `demo_reward(prompts, completions)` is the logit of a TF-IDF + logistic-regression sentiment classifier
  trained on `demo/data/sentiment.tsv`: a reader can check that high-reward samples are the glowing reviews.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import InfalignError
from ..models.tokenization import encode_completion, encode_prompt
from .corpus import all_prompts, review_corpus, template_texts

__all__ = ["DEMO_RECIPE", "SHIPPED_MODEL", "demo_model_dir", "recipe_hash", "rebuild_shipped_model", "demo_prompts",
           "demo_reward", "sentiment_data"]

# Everything that decides the trained model. Its hash (with the corpus) names the cache folder and is recorded in
# the shipped model's marker, so changing any of it trains a new model instead of reusing a stale one.
DEMO_RECIPE = {
    "build_version": 1,  # bump when the build code (tokenizer, model, training loop) changes meaning
    "num_reviews": 6000,
    "corpus_seed": 0,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "train_steps": 900,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "warmup_steps": 30,
    "weight_decay": 0.01,
    "seed": 0,
}
_NUM_TRAIN_PROMPTS, _NUM_TEST_PROMPTS, _PROMPT_SPLIT_SEED = 200, 128, 17
_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}
_MARKER = "infalign_demo.json"  # written last inside the folder; its presence means "complete"
SHIPPED_MODEL = Path(__file__).resolve().parent / "data" / "demo-lm"  # the default recipe, trained
# A minimal template so message-list prompts also work: contents joined by spaces after BOS.
_CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }} {% endfor %}"


# ----------------------------------------------------------------------------------------------- prompts
def demo_prompts(split: str = "train", limit: int | None = None) -> list[str]:
    """Distinct review prompts; "train" (200) and "test" (128) are disjoint and fixed across runs (the first 64
    test prompts are those of earlier versions, whose test split had 64)."""
    if split not in ("train", "test"):
        raise InfalignError(f"demo prompt split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InfalignError(f"limit must be a non-negative int or None, got {limit!r}")
    prompts = all_prompts()
    random.Random(_PROMPT_SPLIT_SEED).shuffle(prompts)
    chosen = (
        prompts[:_NUM_TRAIN_PROMPTS]
        if split == "train"
        else prompts[_NUM_TRAIN_PROMPTS : _NUM_TRAIN_PROMPTS + _NUM_TEST_PROMPTS]
    )
    return chosen if limit is None else chosen[:limit]


# ------------------------------------------------------------------------------------------------ reward
def sentiment_data() -> list[tuple[int, str]]:
    """The shipped labelled sentences, (label, text) with label 1 = positive, 0 = negative."""
    text = resources.files("offline_infalign").joinpath("demo/data/sentiment.tsv").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, sentence = line.split("\t", 1)
        rows.append((int(label), sentence))
    return rows


@functools.lru_cache(maxsize=1)
def _sentiment_classifier():
    """TF-IDF (words and word pairs) + logistic regression, fitted once per process (a few ms)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = sentiment_data()
    labels = [label for label, _ in rows]
    texts = [text for _, text in rows]
    # lbfgs on a fixed dataset is deterministic; C=1 keeps logits moderate so rewards do not saturate.
    classifier = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=1.0, max_iter=1000))
    classifier.fit(texts, labels)
    return classifier


def demo_reward(prompts: Sequence, completions: Sequence[str]) -> np.ndarray:
    """Positive-sentiment logit of each completion, shape (n,) float64; the prompt does not change it."""
    if len(prompts) != len(completions):
        raise InfalignError(f"demo_reward got {len(prompts)} prompts but {len(completions)} completions")
    if len(completions) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(_sentiment_classifier().decision_function(list(completions)), dtype=np.float64)


# ----------------------------------------------------------------------------------------------- model
def _default_cache_dir() -> Path:
    env = os.environ.get("INFALIGN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "offline_infalign"


def _recipe_hash(recipe: dict, corpus: list[tuple[str, str]]) -> str:
    # build_version in the recipe stands for the build code; the package version is left out so that a release
    # does not make the shipped model stale.
    digest = hashlib.sha256()
    digest.update(json.dumps({"recipe": recipe}, sort_keys=True).encode())
    for prompt, review in corpus:
        digest.update(f"{prompt}\t{review}\n".encode())
    digest.update("\n".join(template_texts()).encode())
    return digest.hexdigest()[:16]


def _recipe(train_steps: int | None) -> dict:
    recipe = dict(DEMO_RECIPE)
    if train_steps is not None:
        if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
            raise InfalignError(f"train_steps must be a positive int, got {train_steps!r}")
        recipe["train_steps"] = train_steps
    return recipe


def recipe_hash(train_steps: int | None = None) -> str:
    """The hash of the recipe (DEMO_RECIPE, with `train_steps` if given), its corpus and its templates."""
    recipe = _recipe(train_steps)
    return _recipe_hash(recipe, review_corpus(recipe["num_reviews"], seed=recipe["corpus_seed"]))


def _shipped(digest: str) -> bool:
    """The package's trained model is there, complete, and was trained by this recipe."""
    try:
        info = json.loads((SHIPPED_MODEL / _MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("recipe_hash") == digest


def demo_model_dir(
    cache_dir: str | os.PathLike | None = None, train_steps: int | None = None, progress: bool = True
) -> Path:
    """Path of the demo base model folder: the shipped one for the default recipe, else trained and cached.

    cache_dir: default `$INFALIGN_CACHE` or `~/.cache/offline_infalign`. train_steps: overrides the recipe's
    (tests use a small budget; the folder name changes with it). A model that is not shipped is built in a
    temporary folder and renamed into place when complete, under a file lock, so a killed run never leaves a
    half-written model and concurrent first runs train it once.
    """
    recipe = _recipe(train_steps)
    corpus = review_corpus(recipe["num_reviews"], seed=recipe["corpus_seed"])
    digest = _recipe_hash(recipe, corpus)
    if _shipped(digest):
        return SHIPPED_MODEL
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    final = root / f"demo-lm-{digest}"
    if (final / _MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{final.name}.lock"):
        if (final / _MARKER).is_file():  # another process finished it while we waited
            return final
        _build_into(final, recipe, corpus, progress)
    return final


def _build_into(final: Path, recipe: dict, corpus: list[tuple[str, str]], progress: bool) -> None:
    """Build in a temporary folder beside `final`, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _build(tmp, recipe, corpus, progress)
        if final.exists():  # a stale incomplete folder (no marker) from a foreign writer, or the old shipped model
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            # Without flock (non-POSIX) a concurrent writer may have won the race; theirs is as good.
            if not (final / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def rebuild_shipped_model(progress: bool = True) -> Path:
    """Train the default recipe into the package's `demo/data/demo-lm` (for maintainers, after a recipe change)."""
    recipe = _recipe(None)
    _build_into(SHIPPED_MODEL, recipe, review_corpus(recipe["num_reviews"], seed=recipe["corpus_seed"]), progress)
    return SHIPPED_MODEL


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the rename race tolerance instead
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({word for text in texts for word, _ in pre.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(list(_SPECIALS.values()) + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=_SPECIALS["unk"]))
    backend.pre_tokenizer = pre
    # Join words with spaces and glue punctuation back ("great , and" -> "great, and"); the prefix never occurs.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # BOS on every plain-text prompt (tokenization.encode_prompt uses the tokenizer's special tokens).
    backend.post_processor = processors.TemplateProcessing(
        single=f"{_SPECIALS['bos']} $A", special_tokens=[(_SPECIALS["bos"], vocab[_SPECIALS["bos"]])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_SPECIALS["bos"],
        eos_token=_SPECIALS["eos"],
        pad_token=_SPECIALS["pad"],
        unk_token=_SPECIALS["unk"],
        model_max_length=DEMO_RECIPE["max_position_embeddings"],
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _prepare(recipe: dict, corpus: list[tuple[str, str]]):
    """The tokenizer, the encoded training sequences and the untrained model (seeded) of a recipe."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM


    tokenizer = _build_tokenizer(template_texts() + [text for pair in corpus for text in pair])
    sequences = [encode_prompt(tokenizer, p) + encode_completion(tokenizer, c) for p, c in corpus]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_attention_heads"],
        max_position_embeddings=recipe["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(recipe["seed"])
    return tokenizer, sequences, LlamaForCausalLM(config)


def train_losses(recipe: dict | None = None, steps: int | None = None, progress: bool = False) -> list[float]:
    """The per-step training losses of the first `steps` steps of `recipe` (default DEMO_RECIPE), trained as the
    build trains it (the same schedule over all its steps); what the shipped marker records, to check against."""
    import torch
    from tqdm.auto import tqdm

    recipe = dict(DEMO_RECIPE if recipe is None else recipe)
    corpus = review_corpus(recipe["num_reviews"], seed=recipe["corpus_seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            tokenizer, sequences, model = _prepare(recipe, corpus)
            return _train(model, sequences, recipe, tokenizer.pad_token_id, progress, tqdm, stop_after=steps)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, recipe: dict, corpus: list[tuple[str, str]], progress: bool) -> None:
    """Train the tiny LM on `corpus` and save model + tokenizer + marker into `out` (marker last)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-identical results across machines, and fair on shared CPUs
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            tokenizer, sequences, model = _prepare(recipe, corpus)
            losses = _train(model, sequences, recipe, tokenizer.pad_token_id, progress, tqdm)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "what": "offline-infalign embedded demo base model (tiny Llama trained on generated reviews)",
        "recipe": recipe,
        "recipe_hash": _recipe_hash(recipe, corpus),
        "package_version": __version__,
        "final_train_loss": float(np.mean(losses[-20:])),
        "train_seconds": round(time.perf_counter() - start, 2),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
        "losses": [round(x, 6) for x in losses],
    }
    (out / _MARKER).write_text(_marker_text(info))


def _marker_text(info: dict) -> str:
    """The marker's JSON, its long list of per-step losses on one line."""
    head = json.dumps({k: v for k, v in info.items() if k != "losses"}, indent=2)
    return head[:-2] + ',\n  "losses": ' + json.dumps(info["losses"]) + "\n}\n"


def _train(model, sequences: list[list[int]], recipe: dict, pad_id: int, progress: bool, tqdm,
           stop_after: int | None = None) -> list[float]:
    """Plain next-token training on whole sequences (prompt + review + EOS); returns per-step losses.

    stop_after: stop after that many steps, on the schedule of the recipe's full run (train_losses)."""
    import torch

    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe["learning_rate"],
        betas=(0.9, 0.98),
    )
    steps, warmup = recipe["train_steps"], recipe["warmup_steps"]

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order = np.random.default_rng(recipe["seed"])
    batch_size, losses, perm, cursor = recipe["batch_size"], [], order.permutation(len(sequences)), 0
    bar = tqdm(range(steps if stop_after is None else min(steps, stop_after)), desc="training demo LM", unit="step",
               disable=not progress)
    for _ in bar:
        if cursor + batch_size > len(perm):
            perm, cursor = order.permutation(len(sequences)), 0
        batch = [sequences[i] for i in perm[cursor : cursor + batch_size]]
        cursor += batch_size
        width = max(len(s) for s in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
        labels = input_ids.masked_fill(attention == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


if __name__ == "__main__":  # python -m offline_infalign.demo.assets: retrain the shipped model
    print(f"wrote {rebuild_shipped_model()}")
