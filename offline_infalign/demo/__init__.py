"""The embedded demo: a tiny review-writing base model, its prompts and a sentiment reward; no download.

- `corpus.py`  — the generated review texts and prompts the base model is trained on;
- `assets.py`  — the cached base model, the prompts and the reward (`demo_reward`);
- `run.py`     — `run_demo`: sample → score → prepare → train → eval for two transforms at one KL budget.
"""
