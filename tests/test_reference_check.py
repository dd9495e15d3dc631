"""The trainer's self-check of stored reference log-probs (reference.py, docs/math.md §9): a seeded sample of
the stored columns recomputed with the base weights, the gap (mean and max, per sequence and per token) recorded,
auto going live above the tolerance and stored warning; with float32 and with bfloat16 base weights on CPU, on
samples the sampler wrote (hf backend, both precisions)."""

import json
import logging

import datasets
import pytest
from tiny_models import save_tiny_lm
from train_fixtures import make_prepared

from offline_infalign.artifacts.storage import load_artifact, save_artifact
from offline_infalign.config import PrepareConfig, SampleConfig, ScoreConfig, TrainConfig, load_config
from offline_infalign.kinds import get_kind
from offline_infalign.stages import train as T
from offline_infalign.stages.prepare import run_prepare
from offline_infalign.stages.sample import run_sample
from offline_infalign.stages.score import run_score
from offline_infalign.training.reference import check_stored_reference, reference_tolerance

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "please tell me a review", "the cat was very good", "a day", "what is it"]
OFF = 0.05  # nats per completion token added to every stored value


def _built(root, model, name, **sample):
    """sample (hf) → score → prepare listwise under root/name; the prepared folder."""
    base = root / name
    run_sample(load_config(SampleConfig, None, dict(prompts=str(root / "prompts.jsonl"), model=str(model),
                                                    out=str(base / "samples"), num_samples=4, max_new_tokens=8,
                                                    device="cpu", **sample)), progress=False)
    run_score(load_config(ScoreConfig, None, dict(input=str(base / "samples"), out=str(base / "scored"),
                                                  reward_model="demo")), progress=False)
    run_prepare(load_config(PrepareConfig, None, dict(input=str(base / "scored"), out=str(base / "prepared"),
                                                      kind="listwise", transform="identity", beta=1.0,
                                                      test_fraction=0.0)))
    return base / "prepared"


def _shifted(src, out, per_token=OFF):
    """A copy of a listwise prepared artifact whose stored ref_logps are off by `per_token` × completion length."""
    data, manifest = load_artifact(src)

    def shift(row):
        return {"ref_logps": [x + per_token * len(ids) for x, ids in zip(row["ref_logps"], row["completion_ids"])]}

    data = datasets.DatasetDict({k: v.map(shift, keep_in_memory=True) for k, v in data.items()})  # no cache file in src
    save_artifact(data, out, {k: v for k, v in manifest.items() if k not in ("content_hash", "num_rows")})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcheck")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    model = save_tiny_lm(root / "lm", tokenizer="bpe")
    out = {"root": root, "model": model,
           "f32": _built(root, model, "f32"),  # hf float32 sampler: its own float32 numbers
           "bf16": _built(root, model, "bf16", dtype="bfloat16", ref_logps_from="sampler"),
           "bf16_forward": _built(root, model, "bf16_fwd", dtype="bfloat16")}  # float32 forward pass
    out["f32_off"] = _shifted(out["f32"], root / "f32_off")
    out["bf16_off"] = _shifted(out["bf16"], root / "bf16_off", per_token=0.1)
    return out


def _cfg(data, tmp_path, dataset, **kw):
    base = dict(dataset=str(data[dataset]), model=str(data["model"]), loss="listwise", out=str(tmp_path / "a"),
                max_steps=1, per_device_train_batch_size=2, lora_r=2, save_steps=None, bf16=False)
    return load_config(TrainConfig, None, {**base, **kw})


def _choice(data, tmp_path, dataset, **kw):
    _, info = T.make_trainer(_cfg(data, tmp_path, dataset, **kw))
    return info.reference, info.reference_reason, info.reference_check


def test_the_gap_is_measured_against_a_hand_made_offset(data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(data["model"]))
    model = AutoModelForCausalLM.from_pretrained(str(data["model"])).eval()
    kind = get_kind("listwise")
    exact = load_artifact(data["f32"])[0]["train"]
    off = load_artifact(data["f32_off"])[0]["train"]
    a = check_stored_reference(model, exact, kind, tok.pad_token_id, num_sequences=32, seed=3)
    b = check_stored_reference(model, off, kind, tok.pad_token_id, num_sequences=32, seed=3)
    assert a["sequences"] == b["sequences"] == 32 and a["tokens"] == b["tokens"]  # the same seeded sample
    assert a["gap_per_token"]["max"] < 1e-5  # the sampler's float32 numbers: teacher forcing to rounding
    # stored + 0.05 × tokens: exactly 0.05 per token, and 0.05 × the mean length per sequence
    assert b["gap_per_token"]["mean"] == pytest.approx(OFF, abs=1e-5)
    assert b["gap_per_token"]["max"] == pytest.approx(OFF, abs=1e-5)
    assert b["gap_per_sequence"]["mean"] == pytest.approx(OFF * b["tokens"] / 32, abs=1e-4)
    assert b["gap_per_sequence"]["max"] == pytest.approx(OFF * 8, abs=1e-4)  # the longest: max_new_tokens 8
    assert check_stored_reference(model, off, kind, tok.pad_token_id, num_sequences=5, seed=3)["sequences"] == 5


def test_float32_weights(data, tmp_path):
    ref, why, check = _choice(data, tmp_path, "f32")
    assert ref == "stored" and check["weights_dtype"] == "float32" and check["tolerance_per_token"] == 1e-3
    assert "within the tolerance 0.001" in why
    ref, why, check = _choice(data, tmp_path, "f32_off")
    assert ref == "live" and check["gap_per_token"]["mean"] == pytest.approx(OFF, abs=1e-5)
    assert "nats per token on average" in why and "above the tolerance 0.001" in why
    assert _choice(data, tmp_path, "f32_off", reference_tolerance=0.06)[0] == "stored"
    ref, why, check = _choice(data, tmp_path, "f32_off", reference_check=0)
    assert ref == "stored" and check is None  # no check asked: the manifests alone decide
    # bfloat16 numbers are never used by float32 training: the manifest says what they are
    ref, why, check = _choice(data, tmp_path, "bf16")
    assert ref == "live" and "computed in bfloat16" in why and check is None
    assert _choice(data, tmp_path, "bf16_forward")[0] == "stored"  # a bf16 sampler, a float32 forward pass


def test_stored_warns_and_train_records_the_check(data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        T.train(_cfg(data, tmp_path, "f32_off", reference="stored"))
    assert "above the tolerance 0.001" in caplog.text and "reference='stored' as requested" in caplog.text
    record = json.loads((tmp_path / "a" / "infalign_train.json").read_text())
    assert record["reference"] == "stored" and record["reference_check"]["sequences"] == 32
    assert set(record["reference_check"]) >= {"gap_per_sequence", "gap_per_token", "tokens", "seconds",
                                              "tolerance_per_token", "weights_dtype"}
    assert record["reference_check"]["gap_per_token"]["mean"] == pytest.approx(OFF, abs=1e-5)
    # the group forward's first-batch decision is recorded beside it: a tiny Llama packs, measured in float32
    check = record["packed_check"]
    assert check["packed"] is True and check["dtype"] == "float32" and check["sequences"] > 0
    assert check["gap"] <= check["tolerance"] == 1e-3


def test_bfloat16_weights_on_cpu(data, tmp_path):
    assert reference_tolerance("bfloat16") == 3e-2
    # bf16 numbers of the sampler for bf16 training: the manifests agree and the check passes at 16-bit tolerance
    ref, why, check = _choice(data, tmp_path, "bf16", bf16=True)
    assert ref == "stored" and check["weights_dtype"] == "bfloat16"
    assert 0 < check["gap_per_token"]["mean"] <= 3e-2  # bf16 rounding moves with the batch shape, a little
    # ... but a stored reference 0.1 nats per token off is caught
    ref, why, check = _choice(data, tmp_path, "bf16_off", bf16=True)
    assert ref == "live" and check["gap_per_token"]["mean"] > 0.05 and "above the tolerance 0.03" in why
    # float32 numbers for bf16 weights: live by the manifest, no check needed
    ref, why, check = _choice(data, tmp_path, "bf16_forward", bf16=True)
    assert ref == "live" and "base weights are bfloat16" in why and check is None


def test_full_finetune_refuses_a_reference_that_fails_the_check(data, tmp_path):
    from offline_infalign.core.errors import InfalignError

    with pytest.raises(InfalignError, match="full_finetune needs the dataset's stored reference log-probs, but "
                                            "reference=auto chose live: recomputed on 32 sampled sequences"):
        T.make_trainer(_cfg(data, tmp_path, "f32_off", full_finetune=True))


def test_other_kinds(tmp_path):
    """pairs and bon rows (stored as the fixtures compute them: float32 teacher forcing on encoded text)."""
    model = save_tiny_lm(tmp_path / "lm")
    for kind, loss in (("pairs", "tilted_sigmoid"), ("bon", "weighted_sft")):
        prepared, _ = make_prepared(tmp_path, kind, model)
        cfg = load_config(TrainConfig, None, dict(dataset=str(prepared), model=str(model), loss=loss, bf16=False,
                                                  out=str(tmp_path / f"o_{kind}"), max_steps=1, save_steps=None))
        _, info = T.make_trainer(cfg)
        assert info.reference == "stored" and info.reference_check["gap_per_token"]["max"] < 1e-5
