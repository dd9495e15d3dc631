"""`--engine ray` end to end from the command line, each run starting its own local Ray (so they are slow:
`make scale-check` runs them; `make test` leaves them out, marker `scale_check`).

- The driver SIGKILLed for real after its second chunk (a subprocess: no `finally` runs, the OS drops the lock,
  Ray ends the driver's workers), and the same command rerun: the one-process artifact.
- `build --engine ray`: the reward check, sample and score in one Ray session, which is shut down at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from ray_helpers import RAY, SAMPLE, assert_same_artifact, references, rows

from offline_infalign.artifacts.storage import load_artifact
from offline_infalign.config import BuildConfig, load_config
from offline_infalign.stages.build import run_build

pytestmark = pytest.mark.scale_check

# A driver that SIGKILLs itself right after chunk 1 is written (storage's fault point, which ChunkStore.write
# looks up at call time), then the command line as given.
KILLED_AFTER_CHUNK_1 = """
import os, signal, sys
from offline_infalign import cli
from offline_infalign.artifacts import storage
def fault_point(name):
    if name == "after-chunk:1":
        os.kill(os.getpid(), signal.SIGKILL)
storage.fault_point = fault_point
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return references(tmp_path_factory.mktemp("ray_cli"))


def _sample_argv(s, out):
    flags = {**SAMPLE, **RAY, "prompts": s.prompts, "model": s.lm, "out": out}
    return ["sample"] + [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _run(code_or_module, argv, timeout=300):
    """(returncode, output) of a fresh Python running `argv`, in its own session: whatever Ray leaves after a
    SIGKILL (its agents outlive the driver) is in that process group and ended with it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-c", code_or_module] if "\n" in code_or_module else [sys.executable, "-m",
                                                                                  code_or_module]
    proc = subprocess.Popen(args + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        time.sleep(1)  # let Ray's own teardown run first
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode, out


def test_driver_sigkilled_after_a_chunk_then_the_same_command_gives_the_one_process_artifact(setup, tmp_path):
    out = tmp_path / "samples"
    argv = _sample_argv(setup, out)
    rc, log = _run(KILLED_AFTER_CHUNK_1, argv)
    assert rc == -signal.SIGKILL, log[-3000:]
    assert not (out / "manifest.json").exists()
    written = {p.name for p in (out / "_work" / "chunks").iterdir()}
    assert "chunk-00001" in written, written
    rc, log = _run("offline_infalign.cli", argv)
    assert rc == 0, log[-3000:]
    assert "samples: 7 prompts x 3 completions" in log
    assert_same_artifact(out, setup.ref_sample)


def test_build_runs_the_reward_check_and_both_stages_in_one_ray_session(setup, tmp_path, monkeypatch):
    out = tmp_path / "build"
    cfg = load_config(BuildConfig, None, dict(prompts=str(setup.prompts), model=str(setup.lm), out=str(out),
                                              reward_model=str(setup.rm), **SAMPLE, score_batch_size=4,
                                              transform="identity", beta=1.0, procedure=None, n=None, kl=None,
                                              test_fraction=0.3, **RAY))
    inits = []
    real = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: inits.append(k.get("address")) or real(*a, **k))
    manifests = run_build(cfg, progress=False)
    assert inits == ["local"]  # one session: the reward check's worker, then sample's, then score's
    assert not ray.is_initialized()  # and it ended with the build
    assert_same_artifact(out / "samples", setup.ref_sample)
    # scored: its manifest names its own input folder (build's samples/), so the data and its hash are compared
    assert rows(out / "scored") == rows(setup.ref_score)
    assert load_artifact(out / "scored")[1]["content_hash"] == load_artifact(setup.ref_score)[1]["content_hash"]
    assert manifests["prepared"]["num_rows"]["train"] > 0
