"""Run by tests/test_train_distributed.py under `torch.distributed.run` (2 CPU processes, gloo): the group
forward (`logprobs.packed_logps`) of a model sharded with torch's FSDP2 (`fully_shard` on every decoder layer and
on the root, as accelerate's FSDP2 wraps a transformers model) against the same model unsharded, in log-probs
and in the gradient of a weighted sum of them (every weight trains: full fine-tuning). Rank 0 writes the
largest differences as JSON to argv[2]. argv[1]: the model folder."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from offline_infalign.models.groups import pack_sequences
from offline_infalign.models.logprobs import packed_logps

# Three prompts (one shared by two rows) and completions of several lengths; the ids are in any tiny vocabulary.
PROMPTS = [[5, 6, 7, 8], [9, 10], [5, 6, 7, 8], [11, 12, 13]]
COMPLETIONS = [[14, 15, 3], [16, 17, 18, 19], [20, 3], [21]]


def main(model_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sharded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    assert type(sharded.lm_head.weight).__name__ == "DTensor"  # really sharded
    packed = pack_sequences(PROMPTS, COMPLETIONS, pad_token_id=0)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25])
    result = {}
    for name, model in (("plain", plain), ("sharded", sharded)):
        logps = packed_logps(model, packed["group_units"], packed["group_num_seqs"])[packed["group_seq_index"]]
        (logps * weights).sum().backward()
        grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad) for n, p in
                 model.named_parameters()}
        result[name] = (logps.detach(), grads)
    (lp, gp), (ls, gs) = result["plain"], result["sharded"]
    if dist.get_rank() == 0:
        scale = max(g.abs().max().item() for g in gp.values())
        with open(out, "w") as f:
            json.dump({"logps": lp.tolist(), "logps_diff": (lp - ls).abs().max().item(), "grad_scale": scale,
                       "grad_diff": max((gp[n] - gs[n]).abs().max().item() for n in gp), "params": len(gp),
                       "params_with_grad": sum(g.abs().sum().item() > 0 for g in gs.values())}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
