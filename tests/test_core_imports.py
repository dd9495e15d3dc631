"""`offline_infalign.core` imports without the heavy ML libraries (transformers, datasets, peft, trl, accelerate)."""

import subprocess
import sys
import textwrap


def test_core_imports_without_heavy_libraries():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        BLOCKED = ("transformers", "datasets", "peft", "trl", "accelerate")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked {name}")
                return None

        sys.meta_path.insert(0, Block())
        import offline_infalign.core as core
        names = [m.name for m in pkgutil.iter_modules(core.__path__)]
        expected = {"calibration", "transforms", "tradeoff", "estimators", "finite_k", "losses", "procedures",
                    "density", "optimum", "checks"}
        assert expected <= set(names), names
        for name in names:
            importlib.import_module(f"offline_infalign.core.{name}")
        loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not loaded, loaded
        print("ok", len(names))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")
