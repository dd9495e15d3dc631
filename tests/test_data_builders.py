"""Prompt sources: canonical rows, stable ids, real-dataset row shapes read from local files, bad input."""

import json

import pytest

from data_builders import get_prompt_source, prompt_id, source_names
from data_builders.hh import hh_prompt
from offline_infalign.core.errors import InfalignError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_registry_names_include_all_builders():
    assert {"hh_helpful", "hh_harmless", "tldr", "ultrafeedback", "local"} <= set(source_names())


def test_prompt_id_is_stable_and_content_based():
    assert prompt_id("hello") == prompt_id("hello")
    assert prompt_id("hello") != prompt_id("hello ")
    msgs = [{"role": "user", "content": "hi"}]
    assert prompt_id(msgs) == prompt_id([{"content": "hi", "role": "user"}])  # key order does not matter
    assert len(prompt_id("x")) == 16 and int(prompt_id("x"), 16) >= 0


def test_local_jsonl_text_and_messages(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "how are you", "extra": 1}, {"prompt": "tell me"}])
    rows = list(get_prompt_source(path))
    assert [r["prompt"] for r in rows] == ["how are you", "tell me"]
    assert rows[0]["prompt_id"] == prompt_id("how are you")
    msgs = [{"role": "user", "content": "hi"}]
    rows = list(get_prompt_source(_jsonl(tmp_path / "m.jsonl", [{"prompt": msgs}]), limit=1))
    assert rows == [{"prompt_id": prompt_id(msgs), "prompt": msgs}]


def test_limit(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"p {i}"} for i in range(5)])
    assert [r["prompt"] for r in get_prompt_source(path, limit=2)] == ["p 0", "p 1"]


def test_hh_prompt_is_dialogue_up_to_last_assistant_turn(tmp_path):
    text = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine thanks"
    expected = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"}]
    assert hh_prompt(text) == expected
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": text, "rejected": text.replace("fine", "bad")}])
    assert [r["prompt"] for r in get_prompt_source("hh_harmless", data_files=path)] == [expected]
    with pytest.raises(InfalignError, match="does not end with an Assistant turn"):
        hh_prompt("\n\nHuman: only a question")


def test_tldr_and_ultrafeedback_row_shapes(tmp_path):
    post = {"subreddit": "cats", "title": "My cat", "post": " It sleeps all day. ", "summary": "sleepy"}
    rows = list(get_prompt_source("tldr", data_files=_jsonl(tmp_path / "t.jsonl", [post])))
    assert rows[0]["prompt"] == "SUBREDDIT: r/cats\n\nTITLE: My cat\n\nPOST: It sleeps all day.\n\nTL;DR:"
    uf = {"source": "evol", "instruction": "Explain gravity.", "completions": []}
    rows = list(get_prompt_source("ultrafeedback", data_files=_jsonl(tmp_path / "u.jsonl", [uf])))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Explain gravity."}]


def test_bad_sources(tmp_path):
    with pytest.raises(InfalignError, match="unknown prompt source 'nope'; registered: .*hh_helpful"):
        get_prompt_source("nope")
    with pytest.raises(InfalignError, match="does not exist"):
        get_prompt_source(str(tmp_path / "missing.jsonl"))
    path = _jsonl(tmp_path / "np.jsonl", [{"text": "x"}])
    with pytest.raises(InfalignError, match="has no 'prompt' field; its fields: \\['text'\\]"):
        list(get_prompt_source(path))


def test_empty_and_duplicate_prompts(tmp_path):
    path = _jsonl(tmp_path / "e.jsonl", [{"prompt": "ok"}, {"prompt": "   "}])
    with pytest.raises(InfalignError, match="empty prompt at .* row 1"):
        list(get_prompt_source(path))
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    with pytest.raises(InfalignError, match=f"rows 0 and 2 have the same prompt \\(prompt_id {prompt_id('a')}\\)"):
        list(get_prompt_source(path))
    assert [r["prompt"] for r in get_prompt_source(path, on_duplicate="skip")] == ["a", "b"]
    path = tmp_path / "none.jsonl"
    path.write_text("")
    with pytest.raises(InfalignError, match="is empty"):
        list(get_prompt_source(str(path)))
