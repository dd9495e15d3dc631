"""Output folders and inputs that are not what a stage expects: --out onto another stage's folder is
refused naming the stage it holds; --verify hashes an input against its manifest."""

from pathlib import Path

import pytest

from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, make_build, sample_argv


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def scored(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("scored") / "b")


# ---- --out onto a folder of another stage: the error says which stage it holds ----------------------------------


def test_out_onto_another_stages_folder(assets, scored, tmp_path, capsys):
    import shutil

    prepare = ["prepare", "--input", str(scored / "scored"), "--transform", "identity", "--beta", "0.5"]
    err = error_line(capsys, [*prepare, "--out", str(scored / "samples")])
    assert f"output folder {str(scored / 'samples')!r} holds a finished 'samples' artifact, and this command " \
           "writes a 'prepared' artifact; choose another --out" in err
    err = error_line(capsys, sample_argv(assets, scored / "prepared"))
    assert "holds a finished 'prepared' artifact, and this command writes a 'samples' artifact" in err
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", "demo", "--out",
                          str(scored / "prepared")])
    assert "holds a finished 'prepared' artifact, and this command writes a 'scored' artifact" in err
    # An unfinished run of another stage (killed after its first chunk) is named too.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(scored / "samples", unfinished)
    (unfinished / "manifest.json").unlink()
    (unfinished / "_work" / "chunks").mkdir(parents=True)
    (unfinished / "_work" / "stage").write_text("samples\n")
    (unfinished / "_work" / "config.json").write_text("{}\n")
    err = error_line(capsys, [*prepare, "--out", str(unfinished)])
    assert "holds an unfinished 'samples' artifact, and this command writes a 'prepared' artifact" in err
    # A folder that is no artifact says what it seems to hold.
    err = error_line(capsys, [*prepare, "--out", assets["lm"]])
    assert f"output folder {assets['lm']!r} exists and is not an artifact of this stage (it holds a model " \
           "(config.json))" in err
    # Nothing of the refused folders changed: the samples artifact still opens and verifies.
    from offline_infalign.artifacts.storage import load_artifact

    load_artifact(scored / "samples", stage="samples", verify=True)


def test_a_killed_run_records_its_stage(assets, scored, tmp_path, capsys, monkeypatch):
    """The stage marker is written with the config, before any data: a kill after the first chunk leaves it."""
    from offline_infalign.artifacts.storage import InjectedFault

    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:0")
    with pytest.raises(InjectedFault):
        main(sample_argv(assets, tmp_path / "s", "--chunk-size", "2"))
    monkeypatch.delenv("INFALIGN_FAULT")
    assert (tmp_path / "s" / "_work" / "stage").read_text().strip() == "samples"
    err = error_line(capsys, ["prepare", "--input", str(scored / "scored"), "--transform", "identity", "--beta",
                          "0.5", "--out", str(tmp_path / "s")])
    assert "holds an unfinished 'samples' artifact, and this command writes a 'prepared' artifact" in err
    assert main(sample_argv(assets, tmp_path / "s", "--chunk-size", "2")) == 0  # the same command still resumes


# ---- --verify: the content hash of an input, always (--verify), never (--no-verify) or when small (default) -----

INTEGRITY = "fails its integrity check: its data files do not match the content hash in its manifest"


def _tampered_copy(folder, to):
    """A copy of the artifact `folder` whose data changed after its manifest was written: every prompt_id reversed
    (row counts and K unchanged, so only the content hash can tell)."""
    import gc
    import os
    import shutil

    import datasets

    shutil.copytree(folder, to)
    changed = datasets.load_from_disk(str(to)).map(lambda r: {"prompt_id": r["prompt_id"][::-1]},
                                                   keep_in_memory=True)
    changed.save_to_disk(str(to) + ".new")
    del changed
    gc.collect()
    for f in Path(str(to) + ".new").rglob("*.arrow"):  # a new inode for each: nothing maps the old file's pages
        target = to / f.relative_to(str(to) + ".new")
        shutil.copy(f, str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
    return to


def test_verify_default_small_inputs_and_no_verify(scored, tmp_path, capsys):
    bad = _tampered_copy(scored / "scored", tmp_path / "scored")
    prepare = ["prepare", "--input", str(bad), "--transform", "identity", "--beta", "0.5"]
    assert INTEGRITY in error_line(capsys, [*prepare, "--out", str(tmp_path / "p1")])  # small: hashed by default
    assert main([*prepare, "--no-verify", "--out", str(tmp_path / "p2")]) == 0  # told not to hash


def test_verify_forces_the_hash_for_every_stage_that_opens_an_input(assets, scored, tmp_path, capsys, monkeypatch):
    from offline_infalign.artifacts import storage

    monkeypatch.setattr(storage, "HASH_ALWAYS_BYTES", 0)  # every input is "large": the default does not hash
    samples = _tampered_copy(scored / "samples", tmp_path / "samples")
    scored_bad = _tampered_copy(scored / "scored", tmp_path / "scored")
    prepared = _tampered_copy(scored / "prepared", tmp_path / "prepared")
    prepare = ["prepare", "--input", str(scored_bad), "--transform", "identity", "--beta", "0.5"]
    assert main([*prepare, "--out", str(tmp_path / "p1")]) == 0
    assert INTEGRITY in error_line(capsys, [*prepare, "--verify", "--out", str(tmp_path / "p2")])
    score = ["score", "--input", str(samples), "--reward-model", "demo", "--verify", "--out", str(tmp_path / "s")]
    assert INTEGRITY in error_line(capsys, score)
    train = ["train", "--dataset", str(prepared), "--model", assets["lm"], "--loss", "tilted_pairwise", "--verify",
             "--max-steps", "1", "--out", str(tmp_path / "t")]
    assert INTEGRITY in error_line(capsys, train)


def test_verify_in_merge_and_eval(assets, scored, tmp_path_factory, tmp_path, capsys, monkeypatch):
    import shutil

    from offline_infalign.artifacts import storage

    shards = []
    for i in (0, 1):
        out = tmp_path / f"shard{i}"
        assert main(sample_argv(assets, out, "--shard", f"{i}/2")) == 0
        shards.append(str(_tampered_copy(out, tmp_path / f"bad{i}")) if i else str(out))
    monkeypatch.setattr(storage, "HASH_ALWAYS_BYTES", 0)
    assert INTEGRITY in error_line(capsys, ["merge", "--inputs", *shards, "--verify", "--out", str(tmp_path / "m")])
    # eval reads its prompts from the adapter's prepared dataset: train on a copy, then change the copy.
    prepared = tmp_path / "prepared"
    shutil.copytree(scored / "prepared", prepared)
    adapter = tmp_path / "adapter"
    assert main(["train", "--dataset", str(prepared), "--model", assets["lm"], "--loss", "tilted_pairwise",
                 "--max-steps", "1", "--out", str(adapter)]) == 0
    shutil.rmtree(prepared)
    _tampered_copy(scored / "prepared", prepared)
    capsys.readouterr()
    err = error_line(capsys, ["eval", "--policy", str(adapter), "--limit", "2", "--samples", "2", "--max-new-tokens", "4",
                          "--device", "cpu", "--verify", "--out", str(tmp_path / "e")])
    assert INTEGRITY in err


# ---- hand-edited manifests: one line naming the key, never a KeyError -------------------------------------------

_GONE = object()


def _edited(folder, to, **changes):
    """A copy of the artifact `folder` whose manifest has `changes` (a key set to _GONE is removed)."""
    import json
    import shutil

    shutil.copytree(folder, to)
    manifest = json.loads((to / "manifest.json").read_text())
    for key, value in changes.items():
        manifest.pop(key) if value is _GONE else manifest.__setitem__(key, value)
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_edited_manifests_are_one_line(scored, tmp_path, capsys):
    def score(folder):
        return error_line(capsys, ["score", "--input", str(folder), "--reward-model", "demo", "--out",
                                   str(tmp_path / "out")])

    damaged = "has a damaged manifest: "
    assert damaged + "'content_hash' is missing" in score(_edited(scored / "samples", tmp_path / "a",
                                                                  content_hash=_GONE))
    assert damaged + "'num_samples' is missing" in score(_edited(scored / "samples", tmp_path / "b", num_samples=_GONE))
    err = score(_edited(scored / "samples", tmp_path / "c", num_rows="6"))
    assert damaged + "'num_rows' must be a row count (an integer >= 0, or one per split), got '6'" in err
    assert "the data has" not in err
    err = score(_edited(scored / "scored", tmp_path / "d", stage="samples"))  # a scored artifact relabelled
    assert "its manifest says 'samples' but the data has a 'rewards' column, which only a 'scored' artifact has" in err
    err = error_line(capsys, ["prepare", "--input", str(_edited(scored / "prepared", tmp_path / "e", stage="scored")),
                              "--transform", "identity", "--beta", "0.5", "--out", str(tmp_path / "p")])
    assert "its manifest says 'scored' but the data has splits (train, test)" in err
    err = error_line(capsys, ["merge", "--inputs", str(_edited(scored / "samples", tmp_path / "f", shard=[0, 2],
                                                                content_hash=_GONE)), "--out", str(tmp_path / "m")])
    assert damaged + "'content_hash' is missing" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()
