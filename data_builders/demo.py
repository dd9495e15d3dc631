"""The embedded demo's prompts ("review of the cozy cafe near the station:"), generated, no download.

Splits "train" (200 prompts) and "test" (128), disjoint; see `offline_infalign.demo.assets.demo_prompts`.
"""

from __future__ import annotations

from offline_infalign.demo.assets import demo_prompts

from . import register_source


@register_source("demo")
def demo(split: str = "train"):
    return demo_prompts(split)
