"""`infalign eval` end to end on tiny models (docs/math.md §8, §9): a LoRA adapter saved with peft directly
(independent of the trainer), both tokenizer fixtures; the stored ids, stop sets, cut fractions, the KL against
an independent teacher-forced recomputation, the judge's label, the notes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_evaluation import brute_force_win_rate

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad"]


def _write_adapter(root, base_dir, rm_dir, random_lora: bool, tokenizer: str = "word", **record):
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_bpe_tokenizer, tiny_causal_lm, tiny_tokenizer

    tok = tiny_bpe_tokenizer() if tokenizer == "bpe" else tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)  # the saved base's weights (same seed and config)
    # init_lora_weights=False draws B at random too, so the adapter really changes the policy; the default
    # (B = 0) leaves the policy equal to the base, which the zero-KL test uses.
    # The adapter sits on lm_head: on a random tiny model, attention LoRAs barely move the output distribution.
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["lm_head"], init_lora_weights=not random_lora)
    peft_model = get_peft_model(model, lora)
    adapter = root / f"adapter_{tokenizer}_{'random' if random_lora else 'zero'}"
    peft_model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    info = {
        "config": {"model": str(base_dir), "loss": "tilted_pairwise"},
        "dataset_manifest": {"reward_model": str(rm_dir), "model": str(base_dir)},
        "transform": "exp", "tilt": 5.0, "beta": 0.5, "loss": "tilted_pairwise", "procedure": "bon", "n": 2,
    }
    for key, value in record.items():  # dataset_manifest_* keys go into the dataset manifest
        if key.startswith("dataset_manifest_"):
            info["dataset_manifest"][key.removeprefix("dataset_manifest_")] = value
        else:
            info[key] = value
    (adapter / "infalign_train.json").write_text(json.dumps(info))
    return adapter


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny_models import save_tiny_lm, save_tiny_reward_model

    root = tmp_path_factory.mktemp("eval")
    base_dir = save_tiny_lm(root / "base", seed=0)
    rm_dir = save_tiny_reward_model(root / "rm", seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return SimpleNamespace(root=root, base=base_dir, rm=rm_dir, prompts=prompts,
                           random=_write_adapter(root, base_dir, rm_dir, True),
                           zero=_write_adapter(root, base_dir, rm_dir, False))


def _run_eval(setup, adapter, out, *extra):
    from offline_infalign.cli import main

    argv = ["eval", "--policy", str(adapter), "--prompts", str(setup.prompts), "--samples", "4",
            "--max-new-tokens", "5", "--num-bootstrap", "100", "--device", "cpu", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


def _check_sides(report, rows, tokenizer, max_new_tokens):
    """samples.jsonl holds each side's ids and finish reasons under the report's stop set, and the report's
    cut fraction and mean length per side are those of the stored samples."""
    stops = set(report["stop_token_ids"])
    for side in ("policy", "base"):
        ids = [c for r in rows for c in r[f"{side}_completion_ids"]]
        reasons = [f for r in rows for f in r[f"{side}_finish_reasons"]]
        for r in rows:
            _check_record(tokenizer, stops, max_new_tokens, r[f"{side}_completion_ids"],
                          r[f"{side}_finish_reasons"], r[f"{side}_completions"])
        assert report["cut_fraction"][side] == pytest.approx(np.mean([f == "length" for f in reasons]))
        assert report["mean_length"][side] == pytest.approx(np.mean([len(c) for c in ids]))
    assert report["max_new_tokens"] == max_new_tokens


def test_eval_cli_end_to_end(tiny_setup, tmp_path, capsys):
    out = tmp_path / "ev"
    report = _run_eval(tiny_setup, tiny_setup.random, out, "--model", str(tiny_setup.base), "--reward-model",
                       str(tiny_setup.rm), "--procedure", "bon,won", "--n", "2,4")
    assert set(report["results"]) == {"bon", "won"}
    for procedure in ("bon", "won"):
        assert set(report["results"][procedure]) == {"2", "4"}
        for e in report["results"][procedure].values():
            assert 0.0 <= e["ci_low"] <= e["win_rate"] <= e["ci_high"] <= 1.0
            assert 0.0 < e["predicted"] < 1.0  # exp tilt from infalign_train.json → a prediction
    assert report["num_prompts"] == len(PROMPTS) and report["samples"] == 4
    assert report["transform"] == "exp:tilt=5" and report["beta"] == 0.5
    assert report["kl"] > 0.0 and report["kl_stderr"] > 0.0  # a random LoRA moves the policy away from the base
    assert report["notes"] and "tilted policy" in report["notes"][0]
    pngs = ["win_rate_vs_n.png"] + [f"tradeoff_{p}_n{n}.png" for p in ("bon", "won") for n in (2, 4)]
    assert sorted(report["plots"]) == sorted(str(out / f) for f in pngs)
    assert all((out / f).stat().st_size > 0 for f in pngs)

    # The report is recomputable from the saved samples: summarize on them gives the same numbers.
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(PROMPTS) and all(len(r["policy_completions"]) == 4 for r in rows)
    pol = np.array([r["policy_rewards"] for r in rows])
    base = np.array([r["base_rewards"] for r in rows])
    assert report["results"]["bon"]["4"]["win_rate"] == pytest.approx(brute_force_win_rate(pol, base, 4, "bon"))
    assert report["kl_sequence"] == pytest.approx(np.mean([r["log_ratios"] for r in rows]))
    assert report["kl"] == pytest.approx(np.mean([r["token_kls"] for r in rows]))
    printed = capsys.readouterr().out
    assert "bon N=4" in printed and "KL" in printed
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    assert report["stop_token_ids"] == [tok.eos_token_id]  # the word-level model's only stop id
    _check_sides(report, rows, tok, 5)
    cut = report["cut_fraction"]
    assert f"cut at max_new_tokens=5: policy {cut['policy']:.1%}, base {cut['base']:.1%}" in printed
    assert f"mean length (tokens): policy {report['mean_length']['policy']:.1f}" in printed
    # A random model rarely draws </s> within 5 tokens: most completions are cut, and the report says so.
    assert cut["policy"] > 0.05 and any("hit max_new_tokens=5" in n for n in report["notes"])
    assert any(line.startswith("note: ") and "hit max_new_tokens=5" in line for line in printed.splitlines())

    # The base side really is the base model (adapter disabled): the same draws as sampling the saved base LM
    # directly with the base seed (seed + 1); the policy side differs from it.
    from transformers import AutoModelForCausalLM

    from offline_infalign.models.modeling import load_tokenizer
    from offline_infalign.models.sampling import sample_completions

    base_lm = AutoModelForCausalLM.from_pretrained(tiny_setup.base).eval()
    direct = sample_completions(base_lm, load_tokenizer(str(tiny_setup.base)), [r["prompt"] for r in rows],
                                [r["prompt_id"] for r in rows], num_samples=4, max_new_tokens=5, seed=1,
                                progress=False)
    for key in ("completions", "completion_ids", "finish_reasons"):
        assert [d[key] for d in direct] == [r[f"base_{key}"] for r in rows]
    assert [r["policy_completion_ids"] for r in rows] != [r["base_completion_ids"] for r in rows]


def test_eval_zero_adapter_has_zero_kl(tiny_setup, tmp_path):
    # A LoRA with B = 0 is the base policy: log π − log π_ref is exactly 0 for every sample. Defaults come from
    # infalign_train.json: base model, judge, procedure bon and N = 1, 2, 4 (trained N = 2).
    report = _run_eval(tiny_setup, tiny_setup.zero, tmp_path / "ev0", "--no-plots")
    assert report["kl"] == pytest.approx(0.0, abs=1e-5)
    assert set(report["results"]) == {"bon"} and set(report["results"]["bon"]) == {"1", "2", "4"}
    assert report["model"] == str(tiny_setup.base) and report["reward_model"] == str(tiny_setup.rm)
    assert "plots" not in report and not list((tmp_path / "ev0").glob("*.png"))


LABELS = {0: "negative", 1: "positive"}
WARNING = "samples were drawn at temperature 0.7 (docs/math.md §9): targets describe another policy"


@pytest.fixture(scope="module")
def bpe_setup(tmp_path_factory):
    """The byte-level BPE model whose generation config has two stop ids, a random adapter whose training record
    lists more stop ids, a warning and the label of its two-label reward model."""
    from tiny_models import save_tiny_lm, save_tiny_reward_model, tiny_bpe_tokenizer

    root = tmp_path_factory.mktemp("eval_bpe")
    base_dir = save_tiny_lm(root / "base", seed=0, tokenizer="bpe")
    rm_dir = save_tiny_reward_model(root / "rm2", seed=1, num_labels=2, id2label=LABELS,
                                    label2id={v: k for k, v in LABELS.items()})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    tok = tiny_bpe_tokenizer()
    extra = list(range(8, len(tok), 7))  # many recorded stop ids: stopped and cut completions both occur
    adapter = _write_adapter(root, base_dir, rm_dir, True, tokenizer="bpe", warnings=[WARNING],
                             dataset_manifest_reward_label="positive", dataset_manifest_stop_token_ids=extra)
    return SimpleNamespace(root=root, base=base_dir, rm=rm_dir, prompts=prompts, adapter=adapter, tok=tok,
                           extra=extra)


def test_eval_bpe_end_to_end_on_the_sampled_ids(bpe_setup, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from offline_infalign.cli import main
    from offline_infalign.models.scoring import load_scorer

    out = tmp_path / "ev"
    argv = ["eval", "--policy", str(bpe_setup.adapter), "--prompts", str(bpe_setup.prompts), "--samples", "4",
            "--n", "2,4", "--max-new-tokens", "6", "--num-bootstrap", "50", "--device", "cpu", "--no-plots",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    tok = bpe_setup.tok
    # The stop set: the generation config's two ids (</s>, <eot>) with the training samples' recorded ids.
    two = {tok.eos_token_id, tok.convert_tokens_to_ids("<eot>")}
    assert report["stop_token_ids"] == sorted(two | set(bpe_setup.extra))
    _check_sides(report, rows, tok, 6)
    reasons = {f for r in rows for side in ("policy", "base") for f in r[f"{side}_finish_reasons"]}
    assert reasons == {"stop", "length"}

    # The KL from the stored ids equals an independent teacher-forced recomputation on those ids, with the
    # stop token iff the completion stopped (no EOS appended to cut ones, no re-encoded text).
    base_lm = AutoModelForCausalLM.from_pretrained(bpe_setup.base).eval()
    policy = PeftModel.from_pretrained(base_lm, bpe_setup.adapter).eval()
    ratios, token_kls = [], []
    for r in rows:
        assert r["prompt_ids"] == tok(r["prompt"])["input_ids"]  # a plain-text prompt, as the sampler encodes it
        for c in r["policy_completion_ids"]:
            pol = _teacher_forced(policy, r["prompt_ids"], c)
            with policy.disable_adapter():
                ref = _teacher_forced(policy, r["prompt_ids"], c)
            ratios.append(pol - ref)
            token_kls.append(_token_kl(policy, r["prompt_ids"], c))
    assert np.allclose([x for r in rows for x in r["log_ratios"]], ratios, atol=1e-4)
    assert report["kl_sequence"] == pytest.approx(np.mean(ratios), abs=1e-5) and abs(report["kl_sequence"]) > 1e-3
    # The token-level KL: at each position of the drawn ids (the stop token's included), the exact KL of the two
    # next-token distributions, summed.
    assert np.allclose([x for r in rows for x in r["token_kls"]], token_kls, atol=1e-5)
    assert report["kl"] == pytest.approx(np.mean(token_kls), abs=1e-6) and report["kl"] > 1e-3

    # The judge is the training reward model, read at the training label ("positive": column 1).
    assert report["reward_label"] == "positive" and "(label positive)" in printed
    scorer = load_scorer(str(bpe_setup.rm), device="cpu", reward_label="1")
    for side in ("policy", "base"):
        flat_p = [r["prompt"] for r in rows for _ in r[f"{side}_completions"]]
        flat_c = [c for r in rows for c in r[f"{side}_completions"]]
        assert np.allclose(scorer(flat_p, flat_c), [x for r in rows for x in r[f"{side}_rewards"]], atol=1e-5)

    # Training's warning leads the notes and is printed.
    assert report["notes"][0] == WARNING and f"note: {WARNING}" in printed


def test_eval_long_prompts_skip_or_fail(tiny_setup, tmp_path, capsys):
    from offline_infalign.cli import main

    # The tiny LM has 128 positions: a 130-word prompt cannot fit with 5 new tokens.
    prompts = tmp_path / "long.jsonl"
    rows = [*PROMPTS, " ".join(["good"] * 130)]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    base = ["eval", "--policy", str(tiny_setup.zero), "--prompts", str(prompts), "--samples", "2", "--n", "2",
            "--max-new-tokens", "5", "--num-bootstrap", "20", "--device", "cpu", "--no-plots"]
    assert main([*base, "--out", str(tmp_path / "f")]) == 2
    assert "pass --on-long-prompt" in capsys.readouterr().err
    assert main([*base, "--on-long-prompt", "skip", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "report.json").read_text())["num_prompts"] == len(PROMPTS)


def _teacher_forced(model, prompt_ids, completion_ids) -> float:
    """Σ log p over completion_ids, one unpadded sequence at a time: independent of offline_infalign.models.logprobs."""
    import torch

    with torch.no_grad():
        ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    start = len(prompt_ids) - 1  # position t predicts token t + 1
    return float(sum(logp[start + t, c] for t, c in enumerate(completion_ids)))


def _token_kl(policy, prompt_ids, completion_ids) -> float:
    """Σ over the completion's positions of KL(π(·|prefix) ‖ π_ref(·|prefix)), one unpadded sequence, float64."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    positions = slice(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(completion_ids))
    with torch.no_grad():
        lp = torch.log_softmax(policy(input_ids=ids).logits[0, positions].double(), -1)
        with policy.disable_adapter():
            lq = torch.log_softmax(policy(input_ids=ids).logits[0, positions].double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def test_token_kl_is_unbiased_and_less_noisy_than_the_log_ratio():
    """Seeded Monte Carlo on a tiny model and a random adapter: over many draws from the policy, the token-level KL
    and the log-ratio of the drawn tokens average to the same KL (both unbiased: docs/math.md §8), the token-level
    one with a smaller variance; a zero adapter gives exactly 0."""
    from tiny_models import tiny_tokenizer

    from offline_infalign.models.logprobs import ids_logps_and_kl
    from offline_infalign.models.sampling import sample_completions

    tok = tiny_tokenizer()
    model = _lora_lm(tok, seed=0)
    draws = sample_completions(model, tok, PROMPTS[:2], ["a", "b"], num_samples=300, max_new_tokens=4, seed=3,
                               batch_size=2, progress=False)
    prompts = [s["prompt_ids"] for s in draws for _ in s["completion_ids"]]
    ids = [c for s in draws for c in s["completion_ids"]]
    pi, ref, kl = ids_logps_and_kl(model, prompts, ids, tok.pad_token_id, batch_size=64)
    ratio = pi.astype(np.float64) - ref
    diff = ratio - kl
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(len(diff)), (ratio.mean(), kl.mean())
    assert kl.var() < 0.5 * ratio.var() and kl.min() >= 0
    with model.disable_adapter():  # the base policy against itself: every term is 0
        assert np.abs(ids_logps_and_kl(_Same(model), prompts[:8], ids[:8], tok.pad_token_id)[2]).max() < 1e-6


class _Same:
    """A model whose `disable_adapter()` changes nothing: π = π_ref."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kw):
        return self.model(**kw)

    def disable_adapter(self):
        import contextlib

        return contextlib.nullcontext()


def _check_record(tokenizer, stop_ids, max_new_tokens, ids, reasons, texts):
    """docs/math.md §9: the ids as generated, ending with a stop id iff finish "stop"; none runs past a stop id;
    a cut completion has exactly max_new_tokens ids; the text is the ids decoded without the stop token."""
    assert len(ids) == len(reasons) == len(texts)
    for c, reason, text in zip(ids, reasons, texts):
        assert 1 <= len(c) <= max_new_tokens
        assert not any(t in stop_ids for t in c[:-1]), c  # nothing after a stop id
        if reason == "stop":
            assert c[-1] in stop_ids
            body = c[:-1]
        else:
            assert reason == "length" and len(c) == max_new_tokens and c[-1] not in stop_ids
            body = c
        assert text == tokenizer.decode(body, skip_special_tokens=True)


def _lora_lm(tokenizer, seed=0):
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_causal_lm

    # init_lora_weights=False draws B at random, so the adapter moves the policy (on lm_head: attention LoRAs
    # barely move a random tiny model's output distribution).
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["lm_head"], init_lora_weights=False)
    return get_peft_model(tiny_causal_lm(tokenizer, seed=seed), lora).eval()


@pytest.mark.parametrize("fixture", ["word", "bpe"])
def test_draw_scores_the_sampled_ids_cut_and_stopped_alike(fixture):
    # Cut and stopped completions are scored by one rule, the sampler's (docs/math.md §9): the ids as generated,
    # the stop token included iff the finish reason is "stop", no stop term for a cut completion. Many extra stop
    # ids make both kinds common in a few draws.
    from tiny_models import tiny_bpe_tokenizer, tiny_tokenizer

    from offline_infalign.models.modeling import stop_token_ids
    from offline_infalign.stages.evaluate import _draw_base, _draw_policy

    tok = tiny_bpe_tokenizer() if fixture == "bpe" else tiny_tokenizer()
    model = _lora_lm(tok)
    stops = stop_token_ids(model, tok, extra=range(8, len(tok), 7))
    cfg = SimpleNamespace(samples=4, max_new_tokens=6, batch_size=3, seed=0)
    rows = [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS[:3])]
    draws = {**_draw_policy(model, tok, rows, cfg, stops), "base_samples": _draw_base(model, tok, rows, cfg, stops)}

    reasons = [r for side in ("policy", "base") for s in draws[f"{side}_samples"] for r in s["finish_reasons"]]
    assert {"stop", "length"} <= set(reasons)
    for side in ("policy", "base"):
        for s in draws[f"{side}_samples"]:
            _check_record(tok, stops, 6, s["completion_ids"], s["finish_reasons"], s["completions"])
    checked = {"stop": 0, "length": 0}
    for i, s in enumerate(draws["policy_samples"]):
        # log π: the sampler's own log-probs of its draws (adapter on) are the same numbers.
        assert draws["policy_logps"][i] == pytest.approx(s["ref_logps"], abs=1e-4)
        for j, (c, reason) in enumerate(zip(s["completion_ids"], s["finish_reasons"])):
            assert draws["policy_logps"][i, j] == pytest.approx(
                _teacher_forced(model, draws["prompt_ids"][i], c), abs=1e-4)
            with model.disable_adapter():
                ref = _teacher_forced(model, draws["prompt_ids"][i], c)
                if reason == "stop" and len(c) > 1:
                    # The stop term is in the sum (it is not negligible: without it the value would differ).
                    assert abs(_teacher_forced(model, draws["prompt_ids"][i], c[:-1]) - ref) > 1e-3
            assert draws["ref_logps"][i, j] == pytest.approx(ref, abs=1e-4)
            checked[reason] += 1
    assert checked["stop"] and checked["length"]
    assert np.allclose(draws["log_ratios"], draws["policy_logps"] - draws["ref_logps"])
    assert np.abs(draws["log_ratios"]).max() > 1e-2  # the random adapter really moved the policy


def test_eval_cli_bad_input_is_one_line(tiny_setup, tmp_path, capsys):
    from offline_infalign.cli import main

    rc = main(["eval", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
