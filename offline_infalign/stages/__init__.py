"""The pipeline stages, one file per arrow (sample, score, merge, prepare, build, train, evaluate): the only
code that reads and writes artifacts. sample → score → prepare are chunked, resumable and guarded by its config (DESIGN: pipeline).

Resume: a stage records its config in `out/_work/config.json` and writes each chunk of prompts atomically
(storage.ChunkStore). Rerunning the same command skips finished chunks; since a prompt's completions depend only
on (seed, prompt_id) and a chunk's rewards only on its rows, the result equals an uninterrupted run. A rerun
with a different config is refused with the `config_diff`. Batch sizes, the device and the engine (`--engine`,
`--workers`, ...: where chunks are computed, engines/) may change between runs (say after running out of
memory); the draws are still those of (seed, prompt_id), but other batch shapes
round the model's floats differently, so completions then match an uninterrupted run only up to the rare
token that rounding flips (see sampling.py; in bf16 on a GPU such flips are far more frequent than in
float32). The same command resumes exactly.

Sharding: `--shard I/N` takes the I-th of N contiguous, nearly equal parts of the prompt list (numpy
array_split), so `merge` of all N shards in order is row for row the unsharded artifact.
"""
