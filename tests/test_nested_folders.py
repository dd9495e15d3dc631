"""Output folders never nest, and an artifact is exactly the files its dataset lists (README: Reliability).

An artifact's hash and its rewrite see only the data files its saved dataset lists: the `cache-*.arrow` files a
`datasets` `.map()` leaves in a prepared folder (what TRL's DPOTrainer does) never make it "damaged", and
finishing a run deletes only what an earlier save wrote. An `--out` inside or around another artifact, an
unfinished run, a train output or a folder another run holds locked is refused in one line, and so is an
`--out` that cannot be a folder, for every stage.
"""

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from offline_infalign.artifacts.storage import (
    ChunkStore,
    content_hash,
    load_artifact,
    read_manifest,
    save_artifact,
)
from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, make_build, sample_argv


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("nested"))


@pytest.fixture(scope="module")
def built(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("built") / "b")


def real(path) -> str:
    return os.path.realpath(path)


# ---- the artifact is the files its dataset lists -----------------------------------------------------------------


def _hash_of_every_arrow_file(root: Path) -> str:
    """The content hash as it was computed before it read the dataset's listing: every *.arrow below the folder."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.arrow")):
        if f.relative_to(root).parts[0] != "_work":
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_map_cache_files_beside_the_data_are_not_part_of_the_artifact(built, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(built / "prepared", prepared)
    clean = read_manifest(prepared)["content_hash"]
    assert _hash_of_every_arrow_file(prepared) == clean  # the listing gives the old value on a clean artifact
    loaded = datasets.load_from_disk(str(prepared))
    loaded["train"].map(lambda r: {"n": len(r["prompt"])})  # what TRL's DPOTrainer does to a prepared folder
    loaded["test"].map(lambda r: {"n": 0})
    assert list((prepared / "train").glob("cache-*.arrow")) and list((prepared / "test").glob("cache-*.arrow"))
    assert _hash_of_every_arrow_file(prepared) != clean  # what made such a folder "damaged" before
    data, manifest = load_artifact(prepared, stage="prepared", verify=True)
    assert content_hash(prepared) == clean and len(data["train"]) == manifest["num_rows"]["train"]


def test_finishing_a_run_deletes_only_what_it_wrote(tmp_path):
    out = tmp_path / "out"
    store = ChunkStore(out)
    store.start({"seed": 0})
    store.write(0, datasets.Dataset.from_dict({"x": [1, 2]}))
    (out / "notes.txt").write_text("mine")  # appeared while the run was unfinished
    (out / "inner").mkdir()
    (out / "inner" / "data-00000-of-00001.arrow").write_bytes(b"someone else's")
    save_artifact(store.load(0), out, {"stage": "rows", "config": {"seed": 0}})
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "inner" / "data-00000-of-00001.arrow").read_bytes() == b"someone else's"
    # Rewritten over an earlier DatasetDict: its listed files go, a cache file beside them stays.
    splits = tmp_path / "splits"
    save_artifact(datasets.DatasetDict(train=datasets.Dataset.from_dict({"x": [1]}),
                                       test=datasets.Dataset.from_dict({"x": [2]})), splits, {"stage": "prepared"})
    (splits / "train" / "cache-0123.arrow").write_bytes(b"map cache")
    save_artifact(datasets.Dataset.from_dict({"x": [3]}), splits, {"stage": "rows"})
    assert (splits / "train" / "cache-0123.arrow").read_bytes() == b"map cache"
    assert not (splits / "test").exists() and not (splits / "train" / "state.json").exists()
    assert load_artifact(splits, verify=True)[0]["x"] == [3]


# ---- inside or around another run's folder --------------------------------------------------------------------


def test_out_inside_another_artifact_or_run_is_refused(assets, built, tmp_path, capsys, monkeypatch):
    samples = built / "samples"
    err = error_line(capsys, ["score", "--input", str(samples), "--reward-model", "demo", "--out",
                              str(samples / "scored")])
    assert f"is inside {real(samples)!r}, which holds a finished artifact (manifest.json)" in err
    assert not (samples / "scored").exists()
    load_artifact(samples, verify=True)  # still whole
    err = error_line(capsys, sample_argv(assets, built / "prepared" / "deeper" / "inner"))
    assert f"is inside {real(built / 'prepared')!r}, which holds a finished artifact" in err
    err = error_line(capsys, ["train", "--dataset", str(built / "prepared"), "--model", assets["lm"], "--loss",
                              "tilted_pairwise", "--out", str(built / "prepared" / "adapter")])
    assert "which holds a finished artifact" in err and not (built / "prepared" / "adapter").exists()
    # An unfinished run (killed after its first chunk) and a train output are other runs' folders too.
    from offline_infalign.artifacts.storage import InjectedFault

    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:0")
    with pytest.raises(InjectedFault):
        main(sample_argv(assets, tmp_path / "killed", "--chunk-size", "2"))
    monkeypatch.delenv("INFALIGN_FAULT")
    err = error_line(capsys, sample_argv(assets, tmp_path / "killed" / "inner"))
    assert f"is inside {real(tmp_path / 'killed')!r}, which holds an unfinished run (_work)" in err
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "train_config.json").write_text("{}")
    err = error_line(capsys, sample_argv(assets, tmp_path / "adapter" / "samples"))
    assert "which holds a train run (train_config.json)" in err


def test_out_around_another_artifact_is_refused(built, capsys):
    err = error_line(capsys, ["prepare", "--input", str(built / "scored"), "--transform", "identity", "--beta",
                              "0.5", "--out", str(built)])
    assert f"--out {str(built)!r} holds '" in err and "which holds a finished artifact (manifest.json)" in err
    assert not (built / ".infalign.lock").exists()  # refused: nothing left in a folder it does not own


def _holder(folder):
    """Another process holding the output lock of `folder` until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; from offline_infalign.artifacts.storage import output_lock\n"
        f"with output_lock({str(folder)!r}):\n    print('locked', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_out_inside_or_around_a_folder_another_run_writes(assets, tmp_path, capsys):
    outer = tmp_path / "outer"
    holder = _holder(outer)
    try:  # `sample --out X/inner` while `sample --out X` runs
        err = error_line(capsys, sample_argv(assets, outer / "inner"))
        assert f"is inside {real(outer)!r}, which is being written by another run" in err
    finally:
        holder.communicate("")
    holder = _holder(tmp_path / "x" / "inner")
    try:  # `sample --out X` while `sample --out X/inner` runs
        err = error_line(capsys, sample_argv(assets, tmp_path / "x"))
        assert f"--out {str(tmp_path / 'x')!r} holds 'inner', which is being written by another run" in err
    finally:
        holder.communicate("")
    assert main(sample_argv(assets, outer / "inner")) == 0  # free once the other run ended


# ---- an --out that cannot be a folder: one line in every stage --------------------------------------------------


def _argv(stage, assets, built, out):
    prepared = str(built / "prepared")
    return {
        "sample": sample_argv(assets, out),
        "score": ["score", "--input", str(built / "samples"), "--reward-model", "demo", "--out", str(out)],
        "prepare": ["prepare", "--input", str(built / "scored"), "--transform", "identity", "--beta", "0.5",
                    "--out", str(out)],
        "merge": ["merge", "--inputs", str(built / "samples"), "--out", str(out)],
        "build": ["build", "--model", assets["lm"], "--reward-model", "demo", "--prompts", assets["prompts"],
                  "--num-samples", "2", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)],
        "train": ["train", "--dataset", prepared, "--model", assets["lm"], "--loss", "tilted_pairwise", "--out",
                  str(out)],
        "eval": ["eval", "--policy", str(built), "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
    }[stage]


STAGES = ["sample", "score", "prepare", "merge", "build", "train", "eval", "demo"]


@pytest.mark.parametrize("stage", STAGES)
def test_unusable_out_is_one_line(stage, assets, built, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = {afile: "is a file, not a folder", afile / "below": f"{str(afile)!r} is a file, not a folder",
             tmp_path / "dangling": f"is a symbolic link to {str(tmp_path / 'nowhere')!r}, which does not exist"}
    for out, says in cases.items():
        err = error_line(capsys, _argv(stage, assets, built, out))
        assert says in err, err
    # A parent we may not write into (root may write anywhere, so the refusal is what mkdir raises there).
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if str(self).startswith(str(readonly)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    err = error_line(capsys, _argv(stage, assets, built, readonly / "out"))
    assert f"cannot create --out '{readonly / 'out'}" in err and "Permission denied" in err  # build: out/samples
    assert afile.read_text() == "not a folder" and list(readonly.iterdir()) == []


def test_a_refused_run_leaves_no_lock_in_a_folder_it_does_not_own(built, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    prepare = ["prepare", "--input", str(built / "scored"), "--transform", "identity", "--beta", "0.5", "--out"]
    assert "exists and is not an artifact" in error_line(capsys, [*prepare, str(mine)])
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    lock_before = Path("/.infalign.lock").exists()
    # `--out /` is refused before any lock is taken: a lock on `/` would refuse every other run on the machine
    assert "is the root of the filesystem" in error_line(capsys, [*prepare, "/"])
    assert Path("/.infalign.lock").exists() == lock_before

