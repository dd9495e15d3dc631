"""Shared by the bad-input tests (test_bad_inputs.py, test_context_boundary.py, test_bad_artifacts.py): the one
error line of a refused command, tiny assets and a small finished build (each module wraps these in its own
module-scoped fixtures)."""

import json

from offline_infalign.cli import main
from tests.tiny_models import save_tiny_lm

WORDS = "the movie was very good . tell me about the cat please".split()


def error_line(capsys, argv) -> str:
    """The one error line of a refused command (exit code 2, no traceback)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    errors = [line for line in captured.err.splitlines() if line.startswith(f"infalign {argv[0]}: error: ")]
    assert len(errors) == 1, captured.err
    return errors[0]


def nothing_written(out) -> bool:
    """`out` holds no data: absent, or only the lock file of the refused run (storage.LOCK)."""
    from offline_infalign.artifacts.storage import LOCK

    return not out.exists() or {p.name for p in out.iterdir()} <= {LOCK}


def make_assets(root) -> dict:
    """A tiny word-level LM folder and a six-prompt .jsonl file below `root`."""
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(6)))
    return {"root": root, "lm": str(save_tiny_lm(root / "lm")), "prompts": str(prompts)}


def sample_argv(assets, out, *extra) -> list[str]:
    return ["sample", "--model", assets["lm"], "--prompts", assets["prompts"], "--num-samples", "2",
            "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), *extra]


def make_build(assets, out):
    """A small finished build below `out` (samples, scored, prepared), rewarded by the demo reward."""
    argv = ["build", "--model", assets["lm"], "--reward-model", "demo", "--prompts", assets["prompts"],
            "--num-samples", "4", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), "--transform",
            "identity", "--beta", "0.5"]
    assert main(argv) == 0
    return out


def damaged_copy(src, dst, config=None, remove_tokenizer_key=None, truncate=None):
    """A copy of model folder `src` at `dst` with one thing broken: `config` (a dict) merged into config.json,
    `remove_tokenizer_key` deleted from tokenizer.json, or the file named `truncate` cut to a tenth of its size."""
    import shutil
    from pathlib import Path

    dst = Path(dst)
    shutil.copytree(src, dst)
    if config:
        data = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**data, **config}))
    if remove_tokenizer_key:
        data = json.loads((dst / "tokenizer.json").read_text())
        del data[remove_tokenizer_key]
        (dst / "tokenizer.json").write_text(json.dumps(data))
    if truncate:
        target = dst / truncate
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 10])
    return str(dst)


def reward_module(root, monkeypatch, name: str, source: str) -> str:
    """Write `source` as module `name` below `root`, importable for this test; returns 'name:' to prefix a function.
    Each test uses its own module name: an imported module stays in sys.modules."""
    import textwrap

    (root / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    return f"{name}:"
