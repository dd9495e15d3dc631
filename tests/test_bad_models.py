"""A model, reward model or adapter folder that does not hold what it claims is one line on stderr (exit 2), before
anything is sampled, scored or trained (load_checks.py): a config.json naming another architecture than the weights
(transformers would initialize the missing weights at random), shapes that differ from the weights, damaged weight
or tokenizer files, a chat template that raises; and a --device or --stop-token-ids the model cannot use.

Each test calls the CLI in-process (`offline_infalign.cli.main`); `error_line` checks exit code 2, one error line
and no traceback. Adapters for eval are written with peft directly (no training)."""

import json

import pytest

from offline_infalign.cli import main
from tests.bad_input_helpers import (
    damaged_copy,
    error_line,
    make_assets,
    make_build,
    nothing_written,
    sample_argv,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("bad_models"))


@pytest.fixture(scope="module")
def build(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("build") / "b")


def train_argv(build, model, out, *extra) -> list[str]:
    return ["train", "--dataset", str(build / "prepared"), "--model", str(model), "--loss", "tilted_pairwise",
            "--max-steps", "1", "--out", str(out), *extra]


# ---- weights that do not fill the model the config builds --------------------------------------------------------

# model_type edited in config.json: gpt2 shares no weight name with the saved Llama (all missing, all unexpected);
# qwen2 is Llama plus q/k/v biases (only missing: 3 biases in each of 2 layers).
ARCHITECTURES = [
    ("gpt2", "does not load as GPT2LMHeadModel (model_type 'gpt2' in its config.json): 28 weight(s) "
             "GPT2LMHeadModel needs are not in its files (transformer.h.0.attn.c_attn.bias,",
     "20 weight(s) in its files have no place in GPT2LMHeadModel (model.embed_tokens.weight,"),
    ("qwen2", "6 weight(s) Qwen2ForCausalLM needs are not in its files (model.layers.0.self_attn.k_proj.bias, "
              "model.layers.0.self_attn.q_proj.bias, model.layers.0.self_attn.v_proj.bias and 3 more) and would "
              "be initialized at random", None),
]


@pytest.mark.parametrize("model_type, missing, unexpected", ARCHITECTURES)
def test_config_naming_another_architecture_is_refused_by_sample(assets, tmp_path, capsys, model_type, missing,
                                                                 unexpected):
    bad = damaged_copy(assets["lm"], tmp_path / "m", config={"model_type": model_type})
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--model", bad))
    assert f"model {bad!r} " in err and missing in err
    assert (unexpected in err) if unexpected else "have no place" not in err
    assert "Its weights were saved from another architecture or task than its config.json builds" in err
    assert nothing_written(tmp_path / "o")


def test_config_naming_another_architecture_is_refused_by_train(assets, build, tmp_path, capsys):
    bad = damaged_copy(assets["lm"], tmp_path / "m", config={"model_type": "qwen2"})
    err = error_line(capsys, train_argv(build, bad, tmp_path / "adapter"))
    assert f"model {bad!r} does not load as Qwen2ForCausalLM" in err and "k_proj.bias" in err
    assert not (tmp_path / "adapter").exists()


def test_a_causal_lm_given_as_reward_model_is_refused(assets, build, tmp_path, capsys):
    """A language model is no reward model: its score head would be initialized at random (and its LM head left
    unused); the reward would be noise with exit 0."""
    err = error_line(capsys, ["score", "--input", str(build / "samples"), "--reward-model", assets["lm"],
                              "--out", str(tmp_path / "s")])
    assert f"reward model {assets['lm']!r} does not load as LlamaForSequenceClassification" in err
    assert "1 weight(s) LlamaForSequenceClassification needs are not in its files (score.weight)" in err
    assert "1 weight(s) in its files have no place in LlamaForSequenceClassification (lm_head.weight)" in err


def test_eval_refuses_a_base_model_of_another_architecture(assets, tmp_path, capsys):
    adapter = _write_adapter(tmp_path / "adapter", assets["lm"])
    bad = damaged_copy(assets["lm"], tmp_path / "m", config={"model_type": "qwen2"})
    err = error_line(capsys, _eval_argv(adapter, assets, tmp_path / "ev", "--model", bad))
    assert f"model {bad!r} does not load as Qwen2ForCausalLM" in err


def test_config_with_other_shapes_than_the_weights(assets, tmp_path, capsys):
    bad = damaged_copy(assets["lm"], tmp_path / "m", config={"intermediate_size": 48})
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--model", bad))
    assert (f"model {bad!r}: 6 weight(s) in its files have another shape than its config.json gives "
            "(model.layers.0.mlp.down_proj.weight: (32, 64) in the files, (32, 48) from the config, and 5 more); "
            "the config.json does not belong to these weights") in err


def test_truncated_model_safetensors(assets, tmp_path, capsys):
    bad = damaged_copy(assets["lm"], tmp_path / "m", truncate="model.safetensors")
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--model", bad))
    assert f"cannot load model {bad!r}: SafetensorError: " in err
    assert "a weight file is damaged or truncated: save or download it again" in err


def test_tokenizer_json_without_added_tokens(assets, tmp_path, capsys):
    bad = damaged_copy(assets["lm"], tmp_path / "m", remove_tokenizer_key="added_tokens")
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--model", bad))
    assert f"cannot load the tokenizer of {bad!r}: KeyError: 'added_tokens'" in err
    assert "are damaged or incomplete" in err


# ---- damaged adapters (eval) ----------------------------------------------------------------------------------


def _write_adapter(path, base):
    """A LoRA adapter on q_proj and v_proj of the tiny model, saved by peft, with the training record eval reads."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    (path / "infalign_train.json").write_text(json.dumps({
        "config": {"model": base, "loss": "tilted_pairwise"}, "dataset_manifest": {"reward_model": "demo"},
        "transform": "identity", "beta": 0.5, "loss": "tilted_pairwise", "procedure": "bon", "n": 2}))
    return path


def _eval_argv(adapter, assets, out, *extra):
    return ["eval", "--policy", str(adapter), "--prompts", assets["prompts"], "--samples", "2", "--max-new-tokens",
            "3", "--limit", "2", "--device", "cpu", "--no-plots", "--out", str(out), *extra]


def test_eval_refuses_damaged_adapters(assets, tmp_path, capsys):
    good = _write_adapter(tmp_path / "good", assets["lm"])
    truncated = damaged_copy(good, tmp_path / "truncated", truncate="adapter_model.safetensors")
    err = error_line(capsys, _eval_argv(truncated, assets, tmp_path / "e1"))
    assert f"cannot load adapter {truncated!r} (on base model {assets['lm']!r}): SafetensorError:" in err
    assert "adapter_model.safetensors is damaged or truncated" in err

    rank = damaged_copy(good, tmp_path / "rank")
    config = json.loads((tmp_path / "rank" / "adapter_config.json").read_text())
    (tmp_path / "rank" / "adapter_config.json").write_text(json.dumps({**config, "r": "x"}))
    err = error_line(capsys, _eval_argv(rank, assets, tmp_path / "e2"))
    assert f"adapter {rank!r}: adapter_config.json gives r = 'x'; r must be an integer >= 1" in err

    # An adapter file without the v_proj weights its config asks for: peft only warns, and they would stay B = 0.
    from safetensors.torch import load_file, save_file

    part = damaged_copy(good, tmp_path / "part")
    weights = load_file(tmp_path / "part" / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "v_proj" not in k}, tmp_path / "part" / "adapter_model.safetensors")
    err = error_line(capsys, _eval_argv(part, assets, tmp_path / "e3"))
    assert f"adapter {part!r} (on base model {assets['lm']!r}) does not load: its adapter_model.safetensors lacks " \
           "LoRA weights its adapter_config.json asks for (Found missing adapter keys" in err and "v_proj" in err


# ---- chat templates ---------------------------------------------------------------------------------------------

# Many chat templates refuse a system message with jinja's raise_exception (Gemma's among them).
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}{{ '<' + m['role'] + '> ' + m['content'] + ' ' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}")


def test_a_chat_template_that_raises_is_one_line(assets, tmp_path, capsys):
    from tests.tiny_models import save_tiny_reward_model

    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "tell me about the cat"}]}) + "\n")
    policy = damaged_copy(assets["lm"], tmp_path / "policy")
    (tmp_path / "policy" / "chat_template.jinja").write_text(NO_SYSTEM)
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--model", policy, "--prompts", str(prompts)))
    assert (f"the chat template of tokenizer {policy!r} raised TemplateError: System role not supported (on a "
            "conversation with roles: system, user)") in err

    # The reward model's own template, when scoring samples of a model whose template accepts the prompt.
    assert main(sample_argv(assets, tmp_path / "s", "--prompts", str(prompts))) == 0
    judge = save_tiny_reward_model(tmp_path / "rm")
    (judge / "chat_template.jinja").write_text(NO_SYSTEM)
    capsys.readouterr()
    err = error_line(capsys, ["score", "--input", str(tmp_path / "s"), "--reward-model", str(judge), "--out",
                              str(tmp_path / "sc")])
    assert (f"the chat template of reward model {str(judge)!r} raised TemplateError: System role not supported (on "
            "a conversation with roles: system, user, assistant)") in err


# ---- devices and stop ids -----------------------------------------------------------------------------------------


def test_a_device_torch_does_not_know(assets, build, tmp_path, capsys):
    for argv in (sample_argv(assets, tmp_path / "o", "--device", "banana"),
                 ["score", "--input", str(build / "samples"), "--reward-model", "demo", "--device", "banana",
                  "--out", str(tmp_path / "s")]):
        err = error_line(capsys, argv)
        assert "device 'banana' is not a torch device; use cpu, cuda, cuda:1, mps, ..." in err
    assert nothing_written(tmp_path / "o") and nothing_written(tmp_path / "s")


def test_cuda_on_a_cpu_only_torch(assets, tmp_path, capsys, monkeypatch):
    """What a CPU-only build says (forced here, so the test means the same on a machine with a GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--device", "cuda"))
    assert f"device 'cuda' is not available: this torch ({torch.__version__}) is a CPU-only build; pass --device " \
           "cpu" in err
    adapter = _write_adapter(tmp_path / "adapter", assets["lm"])
    err = error_line(capsys, _eval_argv(adapter, assets, tmp_path / "ev", "--device", "cuda:0"))
    assert "device 'cuda:0' is not available" in err


def test_stop_token_ids_the_model_cannot_generate(assets, tmp_path, capsys):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(assets["lm"]).vocab_size
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--stop-token-ids", "3", str(vocab)))
    assert (f"stop_token_ids [{vocab}] cannot be generated: model {assets['lm']!r} has a vocabulary of {vocab} token "
            f"ids (0 to {vocab - 1}), so a completion would never stop on it") in err
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--stop-token-ids", "-1"))
    assert "sample: stop_token_ids must be an integer >= 0, got -1" in err
    assert main(sample_argv(assets, tmp_path / "ok", "--stop-token-ids", str(vocab - 1))) == 0  # the last id is fine
