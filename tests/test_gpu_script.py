"""benchmarks/gpu/run.sh --toy: the GPU check's CPU mode runs end to end and prints every row of its table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_toy_mode_prints_its_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--toy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {(cells[0].lstrip("| "), cells[1]): cells[2] for cells in table[1:]}
    expected = [("trainer", "TRL DPOTrainer, precomputed reference"),
                ("trainer", "offline-infalign, stored reference, group forward"),
                ("memory", "LoRA, float32 weights: peak"), ("memory", "QLoRA nf4: peak"),
                ("sampling", "hf, generate over K copies (before)"), ("sampling", "hf, shared prefill"),
                ("exactness", "group vs row log-probs, float32"),
                ("exactness", "sampler ref_logps vs teacher-forced, float32")]
    for key in expected:
        assert key in rows, (key, sorted(rows))
    assert any(check == "sampling" and what.startswith("vLLM") for check, what in rows)
    for key in expected[:2] + expected[4:6]:
        assert rows[key].endswith("tokens/s") and float(rows[key].split()[0].replace(",", "")) > 0
    # float32 on CPU: the group forward and the sampler's log-probs agree with the per-row pass to rounding.
    for key in expected[6:]:
        assert float(rows[key].split()[0]) < 1e-3
    assert "device: CPU" in proc.stdout
