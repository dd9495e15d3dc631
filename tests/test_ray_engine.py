"""`--engine ray` on a local Ray (2 CPUs, tiny models): the same artifacts as one process.

Two workers each hold the model (sample) or the reward model (score); the driver writes chunks as they come
back, in any order. Checked against the one-process run: every id, text, finish reason and reward equal, the
content hash and the manifest equal but for the engine's own config keys; a worker SIGKILLed mid-chunk (its
chunk retried on a replacement); the driver stopped after a chunk (in process, as tests/test_faults.py stops
every stage) and the same command rerun; a second run into the folder refused; settings that cannot work refused
in one line. The driver SIGKILLed for real (a subprocess) is in tests/test_ray_cli.py.

One Ray session serves the module (the stages reuse an open session), started as the command would start it
(all the machine's CPUs: two workers of one CPU each need 2). The slowest case (a chunk that keeps killing its
workers) runs in `make scale-check` only (marker scale_check).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray_helpers import (
    CHUNKS,
    PROMPTS,
    RAY,
    TESTS,
    assert_same_artifact,
    references,
    rows,
    sample_cfg,
    score_cfg,
)

from offline_infalign import cli
from offline_infalign.artifacts.storage import InjectedFault, output_lock
from offline_infalign.config import MergeConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.engines import ray_pool
from offline_infalign.stages import sample as sample_stage
from offline_infalign.stages.merge import run_merge
from offline_infalign.stages.sample import SampleJob, run_sample
from offline_infalign.stages.score import run_score


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The one-process references (sample and score, local engine), then a local Ray for the module."""
    s = references(tmp_path_factory.mktemp("ray"))
    s.armed = s.root / "armed"
    # Workers inherit the environment at start: the fault hook (armed per test by creating the file) and tests/
    # on the path (a worker unpickles this module's job class).
    env = {ray_pool.WORKER_FAULT_ENV: f"die-in-chunk:1:{s.armed}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ray_pool.ray_session(SimpleNamespace(ray_address="local")):
            assert ray.cluster_resources().get("CPU") >= 2
            yield s
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_the_reference_is_not_trivial(setup):
    samples = rows(setup.ref_sample)
    assert len(samples) == len(PROMPTS) and all(len(r["completion_ids"]) == 3 for r in samples)
    assert len({tuple(ids) for r in samples for ids in r["completion_ids"]}) > 10  # draws differ
    assert {f for r in samples for f in r["finish_reasons"]} == {"stop", "length"}
    assert len({x for r in rows(setup.ref_score) for x in r["rewards"]}) > 10


class BarrierJob(SampleJob):
    """The sample job, but a chunk waits until both workers have loaded, and each worker notes the chunks it
    computed: tiny chunks would otherwise all go to whichever worker loads first."""

    def __init__(self, cfg, sync: Path):
        super().__init__(cfg)
        self.sync = sync

    def load(self):
        facts = super().load()
        (self.sync / f"loaded-{os.getpid()}").touch()
        return facts

    def run(self, part, bar=None):
        deadline = time.monotonic() + 120
        while len(list(self.sync.glob("loaded-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.sync / f"chunk-{part[0]['prompt_id']}-{os.getpid()}").touch()
        return super().run(part, bar)


def test_sample_with_two_workers_writes_the_one_process_artifact(setup, tmp_path, monkeypatch):
    out, sync = tmp_path / "samples", tmp_path / "sync"
    sync.mkdir()
    monkeypatch.setattr(sample_stage, "SampleJob", lambda cfg: BarrierJob(cfg, sync))
    manifest = run_sample(sample_cfg(setup, out, **RAY), progress=False)
    assert manifest["config"]["engine"] == "ray" and manifest["config"]["workers"] == 2
    by = [p.name.split("-")[-1] for p in sync.glob("chunk-*")]
    assert len(by) == CHUNKS and len(set(by)) == 2, by  # both workers computed chunks
    assert_same_artifact(out, setup.ref_sample)


def test_score_with_two_workers_writes_the_one_process_artifact(setup, tmp_path):
    out = tmp_path / "scored"
    run_score(score_cfg(setup, out, **RAY), progress=False)
    assert_same_artifact(out, setup.ref_score)


def test_a_worker_killed_mid_chunk_has_its_chunk_retried_on_another(setup, tmp_path, caplog):
    out = tmp_path / "samples"
    setup.armed.touch()  # the worker computing chunk 1 SIGKILLs itself before returning it
    with caplog.at_level("WARNING", logger="offline_infalign"):
        run_sample(sample_cfg(setup, out, **RAY), progress=False)
    assert not setup.armed.exists()  # a worker did die in chunk 1 ...
    assert "the worker computing chunk 1 died" in caplog.text and "retrying" in caplog.text
    assert_same_artifact(out, setup.ref_sample)  # ... and the chunk was computed again, the same


@pytest.mark.scale_check  # two runs with worker deaths: make scale-check
def test_a_chunk_that_keeps_killing_its_workers_ends_the_run_in_one_line(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_pool, "MAX_ATTEMPTS", 1)  # the first loss is final: one worker death suffices
    setup.armed.touch()
    with pytest.raises(InfalignError, match="chunk 1 lost its worker 1 times"):
        run_score(score_cfg(setup, tmp_path / "scored", **RAY), progress=False)
    assert not setup.armed.exists()
    # The chunks written before stay; the same command finishes the artifact.
    run_score(score_cfg(setup, tmp_path / "scored", **RAY), progress=False)
    assert_same_artifact(tmp_path / "scored", setup.ref_score)


def test_the_driver_stopped_midway_resumes_with_the_same_command(setup, tmp_path, monkeypatch):
    out = tmp_path / "samples"
    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:1")  # read by the driver only (storage.fault_point)
    with pytest.raises(InjectedFault):
        run_sample(sample_cfg(setup, out, **RAY), progress=False)
    monkeypatch.delenv("INFALIGN_FAULT")
    written = sorted(p.name for p in (out / "_work" / "chunks").iterdir() if not p.name.endswith(".tmp"))
    assert "chunk-00001" in written
    run_sample(sample_cfg(setup, out, **RAY), progress=False)
    assert_same_artifact(out, setup.ref_sample)


def test_a_second_run_into_the_folder_is_refused_before_any_worker_starts(setup, tmp_path, monkeypatch):
    out = tmp_path / "samples"
    started = []
    monkeypatch.setattr(ray_pool.RayEngine, "start", lambda self: started.append(1))
    with output_lock(out):
        with pytest.raises(InfalignError, match=rf"being written by another run \(pid {os.getpid()}\)"):
            run_sample(sample_cfg(setup, out, **RAY), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".infalign.lock"]  # nothing written
    assert not started


def test_a_worker_that_cannot_start_ends_the_run_in_one_line(setup, tmp_path, monkeypatch):
    """As on a node without the package: the job's module cannot be imported where the worker starts."""
    (tmp_path / "driver_only_job.py").write_text("from offline_infalign.stages.sample import SampleJob\n\n\n"
                                                "class DriverOnlyJob(SampleJob):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver's path only: the workers started with the session
    from driver_only_job import DriverOnlyJob

    monkeypatch.setattr(sample_stage, "SampleJob", DriverOnlyJob)
    with pytest.raises(InfalignError, match=r"a worker could not start \(ModuleNotFoundError: No module named "
                                            r"'driver_only_job'\); every node needs offline-infalign installed"):
        run_sample(sample_cfg(setup, tmp_path / "s", **RAY), progress=False)


@pytest.mark.scale_check  # another ray run: make scale-check
def test_shards_made_with_different_engines_merge_into_the_one_process_artifact(setup, tmp_path):
    shards = [tmp_path / "shard0", tmp_path / "shard1"]
    run_sample(sample_cfg(setup, shards[0], shard="0/2"), progress=False)
    run_sample(sample_cfg(setup, shards[1], shard="1/2", **RAY), progress=False)
    run_merge(load_config(MergeConfig, None, dict(inputs=[str(p) for p in shards], out=str(tmp_path / "merged"))))
    assert rows(tmp_path / "merged") == rows(setup.ref_sample)


def test_the_device_is_the_workers_not_the_drivers(setup, tmp_path):
    """--device names the workers' device: the driver (which may have no GPU) does not check it; a worker that
    cannot use it says so in one line (here: workers that reserve no GPU see none)."""
    cfg = sample_cfg(setup, tmp_path / "s", device="cuda", **RAY)  # accepted on this CPU-only driver
    with pytest.raises(InfalignError, match=r"^device 'cuda' .*"):
        run_sample(cfg, progress=False)
    with pytest.raises(InfalignError, match=r"device 'cuda'"):  # without ray the config itself is refused
        sample_cfg(setup, tmp_path / "s", device="cuda")


# ---- refused in one line --------------------------------------------------------------------------------------


def test_more_workers_than_a_local_ray_holds_are_refused(setup, tmp_path):
    cpus = int(ray.cluster_resources()["CPU"])
    with pytest.raises(InfalignError, match=rf"--workers {cpus + 1} x --cpus-per-worker 1 needs {cpus + 1} CPUs; "
                                            rf"the local Ray started for this run has {cpus}: lower --workers"):
        run_sample(sample_cfg(setup, tmp_path / "s", engine="ray", workers=cpus + 1), progress=False)


def test_ray_settings_without_engine_ray_are_refused(setup, tmp_path, capsys):
    with pytest.raises(InfalignError, match=r"workers=2, gpus_per_worker=1.0 applies to engine 'ray' only"):
        sample_cfg(setup, tmp_path / "s", workers=2, gpus_per_worker=1)
    with pytest.raises(InfalignError, match=r"vllm backend on --engine ray needs whole GPUs per worker, at least "
                                            r"tensor_parallel_size=2; got gpus_per_worker=1.0"):
        sample_cfg(setup, tmp_path / "s", engine="ray", backend="vllm", tensor_parallel_size=2, gpus_per_worker=1)
    assert cli.main(["score", "--input", str(setup.ref_sample), "--reward-model", "demo", "--out",
                     str(tmp_path / "o"), "--engine", "ray", "--cpus-per-worker", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "infalign score: error: score: cpus_per_worker must be a finite number >= 0, got -1.0"


def test_without_ray_installed_one_line_says_what_to_install(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    rc = cli.main(["sample", "--prompts", str(setup.prompts), "--model", str(setup.lm), "--out",
                   str(tmp_path / "s"), "--engine", "ray", "--workers", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == ("infalign sample: error: --engine ray needs Ray, which is not installed: pip install 'offline-infalign[ray]'")
    assert not (tmp_path / "s").exists()  # refused before anything was written
