"""QRPO reference datasets in and out (`infalign import` / `infalign export`, integrations/qrpo.py).

The fixtures in tests/fixtures/qrpo/ follow QRPO's published layouts: `original` (its code's reference datasets:
`ref_completions` = the prompt messages plus one assistant message holding a JSON list of K texts, `ref_rewards`;
extra columns `prompt`, `chosen`, `rejected`) and `verl` (`prompt_id`, `prompt_messages`, `ref_rewards`,
`offline_trajectories`, `offline_rewards`, `tools`, `metadata`; here the ref_rewards are listed in another order
than the trajectories). Imports become scored artifacts that prepare takes unchanged; exports and imports round
trip; the artifact contract (hash, resume, refusal) holds; bad input is one line.
"""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from bad_input_helpers import error_line, nothing_written
from train_fixtures import ids_logps, save_scored, scored_with_ids
from transformers import AutoTokenizer

from offline_infalign.artifacts.storage import InjectedFault, load_artifact
from offline_infalign.cli import main
from offline_infalign.config import ExportConfig, ImportConfig, PrepareConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.models.tokenization import encode_prompt
from offline_infalign.stages.export import run_export
from offline_infalign.stages.import_ import IDS_REENCODED, run_import
from offline_infalign.stages.prepare import run_prepare

FIXTURES = Path(__file__).parent / "fixtures" / "qrpo"
LAYOUTS = ("original", "verl")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny_models import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("qrpo") / "model", tokenizer="bpe")


def _fixture_rows(layout):
    return [json.loads(line) for line in (FIXTURES / f"{layout}.jsonl").read_text().splitlines()]


def _import(model, out, input, **kw):
    return run_import(load_config(ImportConfig, None, dict(input=str(input), model=str(model), out=str(out),
                                                           device="cpu", **kw)), progress=False)


def _export(scored, out, layout, **kw):
    return run_export(load_config(ExportConfig, None, dict(input=str(scored), out=str(out), layout=layout, **kw)),
                      progress=False)


def _rows(path):
    data, _ = load_artifact(path, verify=True)
    return data.to_list()


def _expected(layout):
    """(prompt_id, prompt, completions, rewards) per fixture row, read straight from the JSON."""
    out = []
    for row in _fixture_rows(layout):
        if layout == "original":
            out.append((row["prompt_id"], row["ref_completions"][:-1], json.loads(row["ref_completions"][-1]["content"]),
                        row["ref_rewards"]))
        else:
            out.append((row["prompt_id"], row["prompt_messages"],
                        [t[0]["content"] for t in row["offline_trajectories"]], row["offline_rewards"]))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_gives_a_scored_artifact_that_prepare_takes(model, tmp_path, layout):
    m = _import(model, tmp_path / "scored", FIXTURES / f"{layout}.jsonl")  # layout auto-detected
    assert m["stage"] == "scored" and m["imported"]["layout"] == layout and m["num_samples"] == 4
    assert m["completion_ids_source"] == IDS_REENCODED and "encoded again" in m["warnings"][0]
    assert m["model"] == str(model) and m["ref_dtype"] == "float32" and m["tempered"] is False
    tok = AutoTokenizer.from_pretrained(str(model))
    rows = _rows(tmp_path / "scored")
    assert [(r["prompt_id"], r["prompt"], r["completions"], r["rewards"]) for r in rows] == _expected(layout)
    for r in rows:  # the package's prompt encoding; each text encoded, then eos: no completion was cut
        assert r["prompt_ids"] == encode_prompt(tok, r["prompt"])
        assert r["completion_ids"] == [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                                       for c in r["completions"]]
        assert r["finish_reasons"] == ["stop"] * 4
    # ref_logps: teacher-forced on exactly those ids (computed here by the tests' own loop)
    flat_p = [r["prompt_ids"] for r in rows for _ in range(4)]
    flat_c = [c for r in rows for c in r["completion_ids"]]
    np.testing.assert_allclose([x for r in rows for x in r["ref_logps"]], ids_logps(model, flat_p, flat_c),
                               rtol=1e-5, atol=1e-5)

    p = run_prepare(load_config(PrepareConfig, None, dict(input=str(tmp_path / "scored"), out=str(tmp_path / "prep"),
                                                          kind="listwise", transform="identity", beta=0.5)))
    assert any("encoded again" in w for w in p["warnings"])  # prepare carries the note on (model card, record, eval)
    # The ids' tokenizer travels with them (train refuses a model whose tokenizer reads them otherwise).
    from offline_infalign.artifacts.fingerprint import fingerprint_tokenizer

    assert p["tokenizer_fingerprint"] == m["tokenizer_fingerprint"] == fingerprint_tokenizer(tok)
    data, _ = load_artifact(tmp_path / "prep")
    train = data["train"].to_list() + data["test"].to_list()
    assert sorted(r["prompt_id"] for r in train) == sorted(e[0] for e in _expected(layout))
    by_id = {r["prompt_id"]: r for r in rows}
    assert all(t["completion_ids"] == by_id[t["prompt_id"]]["completion_ids"] for t in train)


def test_max_new_tokens_marks_long_completions_cut(model, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(model))
    lengths = sorted(len(tok(c, add_special_tokens=False)["input_ids"]) for e in _expected("original") for c in e[2])
    cap = lengths[len(lengths) // 2]
    m = _import(model, tmp_path / "scored", FIXTURES / "original.jsonl", max_new_tokens=cap, stop_token_id=3)
    rows = _rows(tmp_path / "scored")
    cut = 0
    for r in rows:
        for text, ids, finish in zip(r["completions"], r["completion_ids"], r["finish_reasons"]):
            body = tok(text, add_special_tokens=False)["input_ids"]
            if len(body) >= cap:
                assert finish == "length" and ids == body  # no stop token: a cut completion has no stop term
                cut += 1
            else:
                assert finish == "stop" and ids == body + [3]
    assert 0 < cut < 16 and m["cut_fraction"] == pytest.approx(cut / 16)
    assert 3 in m["stop_token_ids"] and "at least" in m["warnings"][0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_qrpo_dataset_goes_in_and_comes_back_out(model, tmp_path, layout):
    _import(model, tmp_path / "scored", FIXTURES / f"{layout}.jsonl", layout=layout)
    m = _export(tmp_path / "scored", tmp_path / "export", layout)
    assert m["stage"] == "export" and m["warnings"][0].startswith("imported from qrpo")  # the note travels
    back = datasets.load_from_disk(str(tmp_path / "export"))["train"].to_list()
    for theirs, ours in zip(_fixture_rows(layout), back, strict=True):
        assert ours["prompt_id"] == theirs["prompt_id"]
        if layout == "original":
            assert ours["ref_completions"][:-1] == theirs["ref_completions"][:-1]
            assert json.loads(ours["ref_completions"][-1]["content"]) == \
                json.loads(theirs["ref_completions"][-1]["content"])
            assert ours["ref_rewards"] == theirs["ref_rewards"]
        else:
            for col in ("prompt_messages", "offline_trajectories", "offline_rewards"):
                assert ours[col] == theirs[col]
            assert sorted(ours["ref_rewards"]) == sorted(theirs["ref_rewards"])


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "text"])
def test_a_scored_artifact_goes_out_and_comes_back_in_either_layout(model, tmp_path, chat):
    scored = save_scored(tmp_path / "sampled", scored_with_ids(model, num_prompts=3, k=4, chat=chat), model)
    original = _rows(scored)
    for layout in LAYOUTS:
        m = _export(scored, tmp_path / f"export_{layout}", layout)
        assert bool(m["warnings"]) is not chat  # plain-text prompts: written as one user message, with a warning
        _import(model, tmp_path / f"back_{layout}", tmp_path / f"export_{layout}")
        back = _rows(tmp_path / f"back_{layout}")
        for a, b in zip(original, back, strict=True):
            assert (b["prompt_id"], b["completions"], b["rewards"]) == (a["prompt_id"], a["completions"], a["rewards"])
            assert b["prompt"] == (a["prompt"] if chat else [{"role": "user", "content": a["prompt"]}])


def test_import_keeps_the_artifact_contract(model, tmp_path, monkeypatch):
    """Killed after its first chunk, the same command resumes to the uninterrupted result; the finished folder is
    not rewritten; another config or a changed input is refused with the difference."""
    src = tmp_path / "verl.jsonl"
    src.write_text((FIXTURES / "verl.jsonl").read_text())
    ref = _import(model, tmp_path / "ref", src, chunk_size=1)
    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:1")
    with pytest.raises(InjectedFault):
        _import(model, tmp_path / "out", src, chunk_size=1)
    monkeypatch.delenv("INFALIGN_FAULT")
    assert (tmp_path / "out" / "_work" / "chunks" / "chunk-00001").is_dir()
    again = _import(model, tmp_path / "out", src, chunk_size=1)
    assert again["content_hash"] == ref["content_hash"] and _rows(tmp_path / "out") == _rows(tmp_path / "ref")
    assert not (tmp_path / "out" / "_work").exists()
    # finished: nothing redone, also with a setting that cannot change the result
    assert _import(model, tmp_path / "out", src, chunk_size=1, batch_size=3) == again
    with pytest.raises(InfalignError, match="different config.*max_new_tokens: None -> 5"):
        _import(model, tmp_path / "out", src, chunk_size=1, max_new_tokens=5)
    src.write_text(src.read_text().replace("0.81", "0.82"))  # the same file, changed
    with pytest.raises(InfalignError, match=r"different config.*config_diff \(recorded -> now\): input_hash: "):
        _import(model, tmp_path / "out", src, chunk_size=1)


def test_import_reads_folders_and_limits(model, tmp_path):
    rows = _fixture_rows("original")
    datasets.DatasetDict(train_prefs=datasets.Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd"))
    m = _import(model, tmp_path / "scored", tmp_path / "dd", split="train_prefs", limit=2)
    assert [r["prompt_id"] for r in _rows(tmp_path / "scored")] == ["up-0001", "up-0002"]
    assert m["imported"]["num_rows_read"] == 2
    assert not [p for p in (tmp_path / "dd" / "train_prefs").iterdir() if p.name.startswith("cache")]


def _write(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _bad_original(tmp_path, **change):
    rows = _fixture_rows("original")
    for i, fn in change.items():
        fn(rows[int(i[1:])])
    return _write(tmp_path, rows)


def test_bad_input_is_one_line(model, tmp_path, capsys):
    out = tmp_path / "out"

    def line(path, *extra):
        text = error_line(capsys, ["import", "--input", str(path), "--model", str(model), "--out", str(out),
                                   "--device", "cpu", *extra])
        assert nothing_written(out)
        return text

    orig = _fixture_rows("original")
    no_rewards = _write(tmp_path, [{k: v for k, v in r.items() if k != "ref_rewards"} for r in orig])
    assert "the input has neither layout's columns" in line(no_rewards)
    assert "the QRPO original layout needs column(s) ref_rewards" in line(no_rewards, "--layout", "original")

    def drop_last(r):
        texts = json.loads(r["ref_completions"][-1]["content"])[:3]
        r["ref_completions"][-1]["content"] = json.dumps(texts)
        r["ref_rewards"] = r["ref_rewards"][:3]

    assert "row 2 (prompt_id up-0003) has 3 completions but the first row has 4" in \
        line(_bad_original(tmp_path, r2=drop_last))
    assert "row 1 (prompt_id up-0002): 4 completions in ref_completions but 3 ref_rewards" in \
        line(_bad_original(tmp_path, r1=lambda r: r["ref_rewards"].pop()))
    assert "row 0: the last message of ref_completions is not a JSON list of completion texts" in \
        line(_bad_original(tmp_path, r0=lambda r: r["ref_completions"][-1].update(content="[\"a\", ")))
    assert "row 3 (prompt_id up-0001): prompt_id seen twice" in \
        line(_bad_original(tmp_path, r3=lambda r: r.update(prompt_id="up-0001")))

    nan = datasets.Dataset.from_list(orig)
    nan = nan.map(lambda r, i: {"ref_rewards": [float("nan")] + r["ref_rewards"][1:] if i == 2 else r["ref_rewards"]},
                  with_indices=True)
    nan.save_to_disk(str(tmp_path / "nan"))
    assert "row 2 (prompt_id up-0003): ref_rewards[0] is nan; rewards must be finite numbers" in line(tmp_path / "nan")

    verl = _fixture_rows("verl")
    verl[1]["ref_rewards"][0] += 1.0
    assert "row 1 (prompt_id up-0002): offline_rewards (4) are not its ref_rewards (4) in another order" in \
        line(_write(tmp_path, verl))
    verl = _fixture_rows("verl")
    verl[0]["offline_trajectories"][2].append({"role": "user", "content": "more?"})
    assert "row 0 (prompt_id up-0001): offline trajectory 2 must be one assistant message" in line(_write(tmp_path, verl))
    verl = _fixture_rows("verl")
    verl[0]["tools"] = [{"type": "function", "function": {"name": "calc"}}]
    assert "row 0: prompts with tool definitions (tools) cannot be imported" in line(_write(tmp_path, verl))
    one = [dict(r, offline_trajectories=r["offline_trajectories"][:1], offline_rewards=r["offline_rewards"][:1],
                ref_rewards=r["offline_rewards"][:1]) for r in _fixture_rows("verl")]
    assert line(_write(tmp_path, one)).endswith("row 0 (prompt_id up-0001): num_samples K must be an integer >= 2 "
                                              "(completions per prompt), got 1")
    assert f"input file {str(tmp_path / 'missing.jsonl')!r} does not exist" in line(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text((FIXTURES / "verl.jsonl").read_text().replace('"prompt_id": "up-0002"', '"prompt_id": up-0002'))
    assert f"input file {str(broken)!r} line 2 is not valid JSON" in line(broken)
    assert "stop_token_id 9999 is outside tokenizer" in line(FIXTURES / "verl.jsonl", "--stop-token-id", "9999")


def test_too_long_prompts_fail_or_are_skipped(model, tmp_path):
    rows = _fixture_rows("original")
    rows[1]["ref_completions"][-1]["content"] = json.dumps(["word " * 200] + json.loads(
        rows[1]["ref_completions"][-1]["content"])[1:])
    path = _write(tmp_path, rows)
    with pytest.raises(InfalignError, match=r"row 1 \(prompt_id up-0002\): its prompt plus longest completion are "
                                            r"\d+ tokens, more than the model's context of 128"):
        _import(model, tmp_path / "a", path)
    m = _import(model, tmp_path / "b", path, on_too_long="skip")
    assert m["imported"]["num_skipped_long"] == 1 and m["num_rows"] == 3


def test_export_refuses_what_it_cannot_write(model, tmp_path, capsys):
    from train_fixtures import make_prepared_with_ids

    prepared = make_prepared_with_ids(tmp_path, "pairs", model)
    text = error_line(capsys, ["export", "--input", str(prepared), "--out", str(tmp_path / "x")])
    assert "holds a 'prepared' artifact; expected 'scored'" in text
    scored = save_scored(tmp_path / "shard", scored_with_ids(model, num_prompts=2, k=3), model, shard=[0, 2])
    text = error_line(capsys, ["export", "--input", str(scored), "--out", str(tmp_path / "y")])
    assert "is shard [0, 2] of a sharded run" in text


def test_cli_import_prepare_export(model, tmp_path, capsys):
    assert main(["import", "--input", str(FIXTURES / "original.jsonl"), "--model", str(model), "--out",
                 str(tmp_path / "scored"), "--device", "cpu", "--reward-model", "RLHFlow/ArmoRM-Llama3-8B-v0.1"]) == 0
    captured = capsys.readouterr()
    assert "imported qrpo (original): 4 prompts x 4 completions" in captured.out
    assert "warning: imported from qrpo (original): completion_ids are the completion texts encoded again" in captured.err
    assert main(["prepare", "--input", str(tmp_path / "scored"), "--out", str(tmp_path / "prep"), "--kind", "pairs",
                 "--transform", "identity", "--beta", "0.5"]) == 0
    assert "WARNING: imported from qrpo (original)" in capsys.readouterr().out
    assert main(["export", "--input", str(tmp_path / "scored"), "--out", str(tmp_path / "verl"), "--layout",
                 "verl", "--split", "train_prefs"]) == 0
    assert "exported 4 prompts x 4 completions as qrpo (verl), split 'train_prefs'" in capsys.readouterr().out
    m = json.loads((tmp_path / "verl" / "manifest.json").read_text())
    assert m["reward_model"] == "RLHFlow/ArmoRM-Llama3-8B-v0.1" and m["num_samples"] == 4
