"""Artifact folders: atomic chunk writes, manifest last, config guard with config_diff."""

import datasets
import pytest

from offline_infalign.artifacts.storage import (
    ChunkStore,
    content_hash,
    load_artifact,
    read_manifest,
    save_artifact,
)
from offline_infalign.core.errors import InfalignError


def _ds(n, start=0):
    return datasets.Dataset.from_dict({"x": list(range(start, start + n))})


def test_save_and_load_artifact(tmp_path):
    m = save_artifact(_ds(3), tmp_path / "a", {"stage": "rows", "config": {}})
    ds, manifest = load_artifact(tmp_path / "a", stage="rows")
    assert ds["x"] == [0, 1, 2] and manifest == m and m["num_rows"] == 3
    assert datasets.load_from_disk(str(tmp_path / "a"))["x"] == [0, 1, 2]
    assert m["content_hash"] == content_hash(tmp_path / "a")
    save_artifact(_ds(3, 1), tmp_path / "b", {"stage": "rows"})
    assert read_manifest(tmp_path / "b")["content_hash"] != m["content_hash"]
    with pytest.raises(InfalignError, match="holds a 'rows' artifact; expected 'scored'"):
        load_artifact(tmp_path / "a", stage="scored")
    with pytest.raises(InfalignError, match="not a finished artifact folder"):
        read_manifest(tmp_path / "nothing")


def test_overwrite_replaces_old_files(tmp_path):
    save_artifact(datasets.DatasetDict({"train": _ds(2), "test": _ds(1)}), tmp_path / "a", {"stage": "splits"})
    save_artifact(_ds(4), tmp_path / "a", {"stage": "rows"})
    ds, m = load_artifact(tmp_path / "a")
    assert ds["x"] == [0, 1, 2, 3] and not (tmp_path / "a" / "train").exists()


def test_chunk_store_resume_and_config_guard(tmp_path):
    store = ChunkStore(tmp_path / "out")
    assert store.start({"seed": 0, "batch_size": 4}) is False
    store.write(0, _ds(2))
    assert store.done(0) and not store.done(1)
    assert store.load(0)["x"] == [0, 1]
    # A leftover temporary chunk from a crash is not a finished chunk and is rewritten.
    (store.chunks / "chunk-00001.tmp").mkdir()
    assert not store.done(1)
    store.write(1, _ds(1))
    assert store.load(1)["x"] == [0]
    again = ChunkStore(tmp_path / "out")
    assert again.start({"seed": 0, "batch_size": 8}, ignore=("batch_size",)) is False
    with pytest.raises(InfalignError, match=r"unfinished run with a different config.*seed: 0 -> 1"):
        again.start({"seed": 1, "batch_size": 4})
    save_artifact(_ds(3), tmp_path / "out", {"stage": "rows", "config": {"seed": 0, "batch_size": 4}})
    assert not (tmp_path / "out" / "_work").exists()
    assert ChunkStore(tmp_path / "out").start({"seed": 0, "batch_size": 4}) is True
    with pytest.raises(InfalignError, match=r"finished artifact with a different config.*seed: 0 -> 2"):
        ChunkStore(tmp_path / "out").start({"seed": 2, "batch_size": 4})


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(InfalignError, match="exists and is not an artifact"):
        ChunkStore(tmp_path / "out").start({})


def test_crash_while_finishing_leaves_a_resumable_folder(tmp_path, monkeypatch):
    import offline_infalign.artifacts.storage as storage

    out = tmp_path / "out"
    store = ChunkStore(out)
    store.start({"seed": 0})
    store.write(0, _ds(2))
    real = storage.write_json_atomic

    def crash_on_manifest(path, obj):
        if str(path).endswith("manifest.json"):
            raise RuntimeError("killed while finishing")
        return real(path, obj)

    monkeypatch.setattr(storage, "write_json_atomic", crash_on_manifest)
    with pytest.raises(RuntimeError, match="killed while finishing"):
        save_artifact(store.load(0), out, {"stage": "rows", "config": {"seed": 0}})
    monkeypatch.undo()
    again = ChunkStore(out)
    assert again.start({"seed": 0}) is False and again.done(0)  # not complete, chunks kept
    save_artifact(again.load(0), out, {"stage": "rows", "config": {"seed": 0}})
    assert load_artifact(out)[0]["x"] == [0, 1] and not (out / "_work").exists()


def test_empty_split_round_trips(tmp_path):
    # --test-fraction 0 gives an empty test split; `datasets` alone writes no shard for it and cannot load it back.
    train = datasets.Dataset.from_dict({"prompt_id": ["a", "b"], "x": [1.0, 2.0]})
    data = datasets.DatasetDict(train=train, test=train.select([]))
    save_artifact(data, tmp_path / "art", {"stage": "prepared"})
    loaded, manifest = load_artifact(tmp_path / "art", stage="prepared")
    assert len(loaded["train"]) == 2 and len(loaded["test"]) == 0
    assert loaded["test"].column_names == ["prompt_id", "x"]
    assert manifest["num_rows"] == {"train": 2, "test": 0}


# ---- integrity on open ------------------------------------------------------------------------------------------


def _scored(tmp_path, k=4):
    rows = {"prompt_id": ["a", "b"], "prompt": ["p", "q"], "completions": [["x"] * k, ["y"] * k],
            "rewards": [[1.0] * k, [2.0] * k]}
    save_artifact(datasets.Dataset.from_dict(rows), tmp_path / "s", {"stage": "scored", "num_samples": k})
    return tmp_path / "s"


def test_data_changed_after_the_manifest_is_refused(tmp_path):
    path = _scored(tmp_path)
    ds, _ = load_artifact(path, stage="scored")
    # Rewrite the data files with negated rewards, keeping the manifest: the hash no longer matches.
    flipped = ds.map(lambda r: {"rewards": [-v for v in r["rewards"]]})
    flipped.save_to_disk(str(tmp_path / "flipped"))
    for f in (tmp_path / "flipped").glob("*.arrow"):
        target = next(path.glob("data-*.arrow"))  # not the cache file map() left beside it
        target.write_bytes(f.read_bytes())
    with pytest.raises(InfalignError, match="do not match the content hash"):
        load_artifact(path, stage="scored")
    assert len(load_artifact(path, stage="scored", verify=False)[0]) == 2  # verify=False skips the hash only


def test_manifest_that_misstates_rows_or_k_is_refused(tmp_path):
    import json

    path = _scored(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "num_samples": 2}))
    with pytest.raises(InfalignError, match="K=2 completions per prompt, column 'completions' holds 4..4"):
        load_artifact(path, verify=False)
    (path / "manifest.json").write_text(json.dumps({**manifest, "num_rows": 3}))
    with pytest.raises(InfalignError, match="says 3 rows, the data has 2"):
        load_artifact(path, verify=False)


def test_damaged_artifacts_are_one_clear_error(tmp_path):
    path = _scored(tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(InfalignError, match="not a readable manifest"):
        load_artifact(path)
    path = _scored(tmp_path / "again")
    for f in path.glob("*.arrow"):
        f.unlink()
    with pytest.raises(InfalignError, match="cannot be read"):
        load_artifact(path)


# ---- fault injection: a kill at each instant of a chunked stage, then the same command again ----------------------


def _tiny_stage(out, config, chunked=True):
    """What every stage does: guard the folder, write chunks (sample, score) or not (prepare, merge), finish."""
    store = ChunkStore(out)
    if store.start(config):
        return read_manifest(out)
    if not chunked:
        return save_artifact(_ds(6), out, {"stage": "rows", "config": config})
    for i in range(3):
        if not store.done(i):
            store.write(i, _ds(2, 10 * i))
    final = datasets.concatenate_datasets([store.load(i) for i in range(3)])
    return save_artifact(final, out, {"stage": "rows", "config": config})


FINISH = ["finish:saved", "finish:data-moving", "finish:before-manifest", "finish:after-manifest"]
POINTS = [(p, True) for p in ["chunk-saved:0", "after-chunk:0", "chunk-saved:2", "after-chunk:2", *FINISH]]
POINTS += [(p, False) for p in FINISH]


@pytest.mark.parametrize("point,chunked", POINTS)
def test_killed_at_each_point_the_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch, point, chunked):
    from offline_infalign.artifacts.storage import InjectedFault

    clean = _tiny_stage(tmp_path / "clean", {"seed": 0}, chunked)
    monkeypatch.setenv("INFALIGN_FAULT", point)
    with pytest.raises(InjectedFault):
        _tiny_stage(tmp_path / "out", {"seed": 0}, chunked)
    monkeypatch.delenv("INFALIGN_FAULT")
    with pytest.raises(InfalignError, match="different config"):  # the killed folder still knows its config
        _tiny_stage(tmp_path / "out", {"seed": 1}, chunked)
    rerun = _tiny_stage(tmp_path / "out", {"seed": 0}, chunked)
    assert rerun["content_hash"] == clean["content_hash"] and rerun["num_rows"] == clean["num_rows"] == 6
    assert load_artifact(tmp_path / "out")[0]["x"] == load_artifact(tmp_path / "clean")[0]["x"]


def test_output_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    import os
    import subprocess
    import sys

    from offline_infalign.artifacts.storage import output_lock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from offline_infalign.artifacts.storage import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('locked', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InfalignError, match=rf"being written by another run \(pid {holder.pid}\)"):
            with output_lock(out):
                pass
    finally:
        holder.communicate("")  # the holder exits, and the OS releases its lock
    with output_lock(out):  # free again; the lock file does not make the folder foreign to a stage
        assert ChunkStore(out).start({"seed": 0}) is False
        assert (out / ".infalign.lock").read_text().strip() == str(os.getpid())


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path):
    from offline_infalign.artifacts.storage import output_lock

    with pytest.raises(InfalignError, match="bad input"):
        with output_lock(tmp_path / "new"):
            raise InfalignError("bad input")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with output_lock(tmp_path / "old"):  # a folder the user made stays
        pass
    assert (tmp_path / "old").is_dir()
