"""modeling: LoRA policy loading, QLoRA on CPU, adapter reload, dtype and error handling."""

import pytest
import torch
from tiny_models import save_tiny_lm

from offline_infalign.core.errors import InfalignError
from offline_infalign.models import modeling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("m") / "lm")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_policy_equals_base_at_init_and_only_lora_trains(model_dir):
    policy, tok = modeling.load_policy(str(model_dir), lora_r=4, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    assert policy.peft_config["default"].lora_alpha == 8  # default 2 r
    ids = torch.tensor([[2, 10, 11, 12]])
    policy.eval()
    with policy.disable_adapter():
        base = _logits(policy, ids)
    torch.testing.assert_close(_logits(policy, ids), base)  # B = 0 at init
    assert modeling.base_weights_dtype(policy) == "float32"


def test_gradient_checkpointing_backward(model_dir):
    policy, _ = modeling.load_policy(str(model_dir), lora_r=2, gradient_checkpointing=True)
    policy.train()
    policy(input_ids=torch.tensor([[2, 10, 11, 12]])).logits.sum().backward()
    grads = [p.grad for n, p in policy.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_qlora_on_cpu(model_dir):
    problem = modeling.bitsandbytes_problem()
    if problem is not None:
        pytest.skip(problem)
    policy, _ = modeling.load_policy(str(model_dir), lora_r=2, qlora=True)
    assert modeling.base_weights_dtype(policy) == "nf4"
    policy.train()
    policy(input_ids=torch.tensor([[2, 10, 11, 12]])).logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_" in n)


def test_adapter_roundtrip(model_dir, tmp_path):
    policy, tok = modeling.load_policy(str(model_dir), lora_r=4)
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.2)
    policy.eval()
    ids = torch.tensor([[2, 10, 11, 12]])
    expected = _logits(policy, ids)
    policy.save_pretrained(tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    loaded, tok2 = modeling.load_adapted(str(model_dir), tmp_path / "a")
    torch.testing.assert_close(_logits(loaded, ids), expected)
    assert not loaded.training and tok2.pad_token_id == tok.pad_token_id


def test_errors(model_dir, tmp_path, monkeypatch):
    with pytest.raises(InfalignError, match="not a PEFT adapter folder"):
        modeling.load_adapted(str(model_dir), tmp_path)
    with pytest.raises(InfalignError, match="unknown dtype 'fp8'"):
        modeling.resolve_dtype("fp8")
    with pytest.raises(InfalignError, match="cannot load model"):
        modeling.load_base(str(tmp_path / "missing"))
    monkeypatch.setattr(modeling, "bitsandbytes_problem", lambda: "its 4-bit kernels fail here (test)")
    with pytest.raises(InfalignError, match="qlora=True needs bitsandbytes.*plain LoRA"):
        modeling.load_policy(str(model_dir), qlora=True)
    assert modeling.resolve_dtype(None) == torch.float32  # CPU
