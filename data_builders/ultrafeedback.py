"""UltraFeedback prompts (`instruction` in openbmb/UltraFeedback) as a single user message."""

from __future__ import annotations

from . import load_rows, register_source

HUB_ID = "openbmb/UltraFeedback"


def ultrafeedback_prompt(row: dict) -> list[dict[str, str]]:
    text = row["instruction"] if "instruction" in row else row["prompt"]
    return [{"role": "user", "content": text}]


@register_source("ultrafeedback")
def ultrafeedback(split: str = "train", data_files=None):
    return (ultrafeedback_prompt(row) for row in load_rows(HUB_ID, split, data_files=data_files))
