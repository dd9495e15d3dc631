"""`merge` compares what the shards were made from, not how it was named (README: Reliability).

Every shard records the hash of the whole prompt list it was cut from (after --limit and the duplicate rule):
shards cut from different lists — the prompt file changed between shard runs — are refused instead of merging
with prompts lost. The model, the reward and the prompt file may be named by other paths on other machines
(mount points): they are compared by fingerprint and by the prompt list.
"""

import json
import shutil

import pytest

from offline_infalign.artifacts.storage import load_artifact, read_manifest
from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, sample_argv
from tests.tiny_models import save_tiny_lm


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("merge"))


def _shard(assets, out, shard, model=None, prompts=None):
    argv = sample_argv({**assets, "lm": str(model or assets["lm"]), "prompts": str(prompts or assets["prompts"])}, out,
                       "--shard", shard)
    assert main(argv) == 0
    return str(out)


def test_a_prompt_file_changed_between_shard_runs_is_refused(assets, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(assets["prompts"], prompts)
    first = _shard(assets, tmp_path / "s0", "0/2", prompts=prompts)
    lines = prompts.read_text().splitlines(keepends=True)
    prompts.write_text("".join(lines[:1] + lines[3:]))  # two prompts removed before the second shard ran
    second = _shard(assets, tmp_path / "s1", "1/2", prompts=prompts)
    m0, m1 = read_manifest(first), read_manifest(second)
    assert (m0["prompt_list_size"], m1["prompt_list_size"]) == (6, 4)
    err = error_line(capsys, ["merge", "--inputs", first, second, "--out", str(tmp_path / "m")])
    assert "the shards were cut from different prompt lists (shard 0/2 (" in err
    assert f"6 prompts, list {m0['prompt_list_hash'][:12]}" in err and f"4 prompts, list {m1['prompt_list_hash'][:12]}" in err
    assert not (tmp_path / "m").exists()


def test_the_same_model_and_prompts_at_other_paths_merge(assets, tmp_path, capsys):
    """Two machines: the second mounts the model and the prompt file elsewhere. Same files: the shards merge and
    give the unsharded run's prompts and draws."""
    model2 = shutil.copytree(assets["lm"], tmp_path / "mnt" / "lm")
    prompts2 = shutil.copy(assets["prompts"], tmp_path / "mnt" / "prompts.jsonl")
    parts = [_shard(assets, tmp_path / "s0", "0/2"), _shard(assets, tmp_path / "s1", "1/2", str(model2), prompts2)]
    assert main(["merge", "--inputs", *parts, "--out", str(tmp_path / "merged")]) == 0
    assert main(sample_argv(assets, tmp_path / "all")) == 0
    merged, whole = load_artifact(tmp_path / "merged")[0], load_artifact(tmp_path / "all")[0]
    assert merged["prompt_id"] == whole["prompt_id"] and merged["completion_ids"] == whole["completion_ids"]
    assert read_manifest(tmp_path / "merged")["prompt_list_hash"] == read_manifest(tmp_path / "all")["prompt_list_hash"]
    # Another model under the name of the first: refused, naming the fingerprint that differs.
    other = save_tiny_lm(tmp_path / "other" / "lm", seed=7)
    odd = _shard(assets, tmp_path / "odd", "1/2", str(other))
    err = error_line(capsys, ["merge", "--inputs", parts[0], odd, "--out", str(tmp_path / "m2")])
    assert "was made with a different config" in err and "model_fingerprint: 'files:" in err


def test_scored_shards_carry_the_list_they_were_cut_from(assets, tmp_path):
    samples = tmp_path / "samples"
    assert main(sample_argv(assets, samples)) == 0
    listed = read_manifest(samples)
    scored = []
    for i in (0, 1):
        out = tmp_path / f"scored{i}"
        assert main(["score", "--input", str(samples), "--reward-model", "demo", "--shard", f"{i}/2", "--out",
                     str(out)]) == 0
        scored.append(json.loads((out / "manifest.json").read_text()))
    assert {m["prompt_list_hash"] for m in scored} == {listed["prompt_list_hash"]}
    assert {m["tokenizer_fingerprint"] for m in scored} == {listed["tokenizer_fingerprint"]}
