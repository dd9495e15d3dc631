"""Reddit TL;DR summarization: a post becomes the standard "SUBREDDIT / TITLE / POST / TL;DR:" prompt."""

from __future__ import annotations

from . import load_rows, register_source

HUB_ID = "trl-lib/tldr"


def tldr_prompt(row: dict) -> str:
    """Rows with `post` (+ `subreddit`, `title`) are formatted; rows that already carry `prompt` keep it."""
    if row.get("post") is not None:
        return (f"SUBREDDIT: r/{row.get('subreddit') or ''}\n\nTITLE: {row.get('title') or ''}\n\n"
                f"POST: {row['post'].strip()}\n\nTL;DR:")
    return row["prompt"]


@register_source("tldr")
def tldr(split: str = "train", data_files=None):
    return (tldr_prompt(row) for row in load_rows(HUB_ID, split, data_files=data_files))
