"""`infalign export`: a scored artifact in another system's layout (QRPO's), with raw rewards."""

from __future__ import annotations

import sys

from ..config.interop import FORMAT_LABELS, LAYOUTS_HELP
from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "export", "ExportConfig", run,
        help=f"write a scored artifact in {FORMAT_LABELS} layout ({LAYOUTS_HELP})",
        description="Write the prompts, their K completion texts and raw rewards in the --format's --layout, as a "
        "`datasets` DatasetDict (datasets.load_from_disk(OUT)[split]) plus manifest.json. The token ids and "
        "ref_logps are not part of those layouts; QRPO calibrates the raw rewards itself.")


def run(args) -> int:
    from ..config import ExportConfig
    from ..stages.export import run_export

    cfg = load(args, ExportConfig)
    m = run_export(cfg)
    print(f"exported {m['num_prompts']} prompts x {m['num_samples']} completions as {m['format']} ({m['layout']}), "
          f"split {m['split']!r} -> {cfg.out}")
    for line in m.get("warnings") or []:
        print(f"warning: {line}", file=sys.stderr)
    return 0
