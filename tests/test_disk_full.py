"""A full disk in sample, prepare and train is one line naming the path and "free space and rerun"; the rerun
of the same command, once there is space, finishes with the result of a run that never failed.

The disk fills up where the stage writes: `datasets`' save_to_disk (chunks and the finishing save, as pyarrow
reports it: OSError ENOSPC) and torch's checkpoint writer (RuntimeError "[enforce fail at
inline_container.cc:672]", which is all torch says). Checked once for real on a 1 MiB tmpfs (README:
Reliability); here the writes are made to fail the same way.
"""

import errno
import json

import datasets
import pytest

from offline_infalign.artifacts.output_folder import is_disk_full
from offline_infalign.artifacts.storage import read_manifest
from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, make_build, sample_argv

TORCH_ENOSPC = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def built(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("built") / "b")


def _fail_writes(monkeypatch, after: int = 0):
    """save_to_disk fails for lack of space from its (after+1)-th call on, having written part of its files."""
    real = datasets.Dataset.save_to_disk
    calls = []

    def save(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= after:
            return real(self, path, *args, **kwargs)
        real(self, path, *args, **kwargs)  # the space it took before the disk was full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save)
    return calls


def test_recognizes_what_each_writer_says():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert is_disk_full(RuntimeError(TORCH_ENOSPC))
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:300] file not found"))


def test_sample_on_a_full_disk_then_the_rerun(assets, tmp_path, capsys, monkeypatch):
    clean = main(sample_argv(assets, tmp_path / "clean", "--chunk-size", "2"))
    assert clean == 0
    out = tmp_path / "s"
    calls = _fail_writes(monkeypatch, after=1)  # the first chunk lands, the second finds the disk full
    err = error_line(capsys, sample_argv(assets, out, "--chunk-size", "2"))
    assert f"no space left on the device of {calls[1]!r}" in err and str(out) in err
    assert "free space and rerun the same command" in err
    assert not list((out / "_work" / "chunks").glob("*.tmp"))  # the half-written chunk gave its space back
    monkeypatch.undo()
    assert main(sample_argv(assets, out, "--chunk-size", "2")) == 0
    assert read_manifest(out)["content_hash"] == read_manifest(tmp_path / "clean")["content_hash"]


def test_prepare_on_a_full_disk_then_the_rerun(built, tmp_path, capsys, monkeypatch):
    prepare = ["prepare", "--input", str(built / "scored"), "--transform", "identity", "--beta", "0.5", "--out"]
    _fail_writes(monkeypatch)
    err = error_line(capsys, [*prepare, str(tmp_path / "p")])
    assert "no space left on the device of" in err and "free space and rerun the same command" in err
    assert not (tmp_path / "p" / "_work" / "final.tmp").exists()
    monkeypatch.undo()
    assert main([*prepare, str(tmp_path / "p")]) == 0
    assert read_manifest(tmp_path / "p")["content_hash"] == read_manifest(built / "prepared")["content_hash"]


def test_train_on_a_full_disk_then_the_rerun(assets, built, tmp_path, capsys, monkeypatch):
    import torch

    out = tmp_path / "adapter"
    train = ["train", "--dataset", str(built / "prepared"), "--model", assets["lm"], "--loss", "tilted_pairwise",
             "--max-steps", "2", "--save-steps", "1", "--out", str(out)]
    real = torch.save

    def full(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):  # the first checkpoint lands; the second is cut short
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError(TORCH_ENOSPC)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    err = error_line(capsys, train)
    assert f"no space left on the device of --out {str(out)!r}" in err and "free space and rerun" in err
    # The checkpoint cut short is gone at once (its space is free again); the complete one and nothing final stay.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert not (out / "infalign_train.json").exists()
    monkeypatch.undo()
    assert main(train) == 0
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["global_step"] == 2 and record["resumed_from"].endswith("checkpoint-1")
