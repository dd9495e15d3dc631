"""Every model and tokenizer load: the sampler's causal LM, the policy (base model + LoRA, or QLoRA on 4-bit
weights), a trained adapter for evaluation; the default device and the one pad-token rule (`load_tokenizer`).

The reference policy is never a second model: it is the same PeftModel with its adapter disabled (or the
stored `ref_*logps` columns, see trainer.py), so training holds one copy of the base weights. Full fine-tuning
(`load_policy(full_finetune=True)`) trains the base model itself and needs the stored columns; evaluating its
output holds both models (`FullPolicy`).

- dtype: None picks bfloat16 on a GPU that supports it and float32 otherwise (CPU training in bf16 is slow
  and imprecise). The dtype the base weights end up in is what `base_weights_dtype` reports; the trainer
  compares it with the dtype the stored reference log-probs were computed in.
- QLoRA: 4-bit nf4 weights with double quantization (bitsandbytes), bf16 compute on GPU (float32 on CPU),
  `prepare_model_for_kbit_training`. On CPU, bitsandbytes' AVX512-bf16 kernel path breaks the backward pass
  of biased 4-bit linears, so it is switched off on every Linear4bit.
- What may run code: `trust_remote_code` is off unless asked, so a hub checkpoint's own Python code never runs
  by default; and weights load from safetensors only (`from_pretrained` below), because a pickle file
  (pytorch_model.bin, adapter_model.bin) can run code when it is unpickled. A folder with pickle weights only
  is refused naming `allow_pickle_weights`, the opt-in for a folder the user trusts.
- Every load is checked (load_checks.py): weights that do not fill the model the config builds (missing,
  unexpected, another shape), a damaged weight or tokenizer file, a broken adapter_config.json, LoRA target
  modules the model lacks, a device torch cannot use: one InfalignError naming the folder, never a model with
  freshly initialized weights.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.errors import InfalignError
from .load_checks import (
    ALL_LINEAR,
    PICKLE_OPT_IN,
    check_adapter_config,
    check_device,
    check_loaded_weights,
    check_reachable,
    check_safetensors,
    check_target_modules,
    one_line,
    pickle_refusal,
    quiet_load_report,
)

__all__ = [
    "default_device",
    "free_memory",
    "load_tokenizer",
    "load_causal_lm",
    "load_policy",
    "load_adapted",
    "FullPolicy",
    "lora_config",
    "base_weights_dtype",
    "bitsandbytes_problem",
    "resolve_dtype",
    "stop_token_ids",
    "from_pretrained",
    "check_safetensors",
    "check_loaded_weights",
    "check_device",
    "check_target_modules",
    "check_adapter_config",
    "PICKLE_OPT_IN",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | None = None) -> torch.dtype:
    """None/'auto' → bfloat16 on a bf16-capable GPU, float32 otherwise; a name → that dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        on_gpu = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in _DTYPES:
        raise InfalignError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def from_pretrained(auto_cls, path, *, allow_pickle_weights: bool = False, what: str = "model", **kwargs):
    """`auto_cls.from_pretrained(path, **kwargs)` reading safetensors only unless `allow_pickle_weights`;
    a folder or hub repo without them, one that cannot be loaded (a damaged or truncated weight file, a config
    transformers cannot build), or one whose weights do not fill the model its config builds
    (`check_loaded_weights`), is one InfalignError naming it."""
    check_safetensors(path, allow_pickle_weights, what)
    if not allow_pickle_weights:
        kwargs["use_safetensors"] = True
    # Shapes are compared by check_loaded_weights: without ignore_mismatched_sizes transformers raises an error
    # that points at the report held back here. Nothing of a mismatched load is kept: it is refused.
    kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
    try:
        with quiet_load_report():
            model, info = auto_cls.from_pretrained(str(path), **kwargs)
    except OSError as exc:
        if not allow_pickle_weights and "safetensors" in str(exc):
            raise pickle_refusal(path, what, "none found") from None
        raise InfalignError(f"cannot load {what} {str(path)!r}: {one_line(exc)}") from None
    except Exception as exc:  # transformers, safetensors and torch raise many types for one cause: unloadable
        hint = ("; a weight file is damaged or truncated: save or download it again"
                if type(exc).__name__ == "SafetensorError" else "")
        raise InfalignError(f"cannot load {what} {str(path)!r}: {type(exc).__name__}: {one_line(exc)}{hint}") \
            from None
    check_loaded_weights(info, path, what, model)
    return model


def default_device(device: str | None = None) -> str:
    """`device` when given (checked: `check_device`), else the GPU when there is one, else the CPU."""
    return check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")


def free_memory() -> None:
    """Return freed model memory to the device before the next model loads (callers drop their reference)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(model_path: str, trust_remote_code: bool = False, pad_token_as_eos: bool = True):
    """The model's tokenizer; the one place that decides what a tokenizer without a pad token pads with.

    pad_token_as_eos: a missing pad token becomes EOS (padding is always masked, so this is safe). Train and
    eval pass True; `sample` passes its --pad-token-as-eos flag (off by default), so a tokenizer without a pad
    token is refused there by tokenization.check_tokenizer unless the user asks for EOS.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a damaged tokenizer.json raises KeyError, ValueError, Exception from tokenizers, ...
        raise InfalignError(f"cannot load the tokenizer of {str(model_path)!r}: {type(exc).__name__}: "
                            f"{one_line(exc)}; its tokenizer files (tokenizer.json, tokenizer_config.json, ...) are "
                            "damaged or incomplete: save the tokenizer again") from None
    if pad_token_as_eos and tok.pad_token_id is None and tok.eos_token_id is not None:
        logger.info("tokenizer %s has no pad token; using EOS for padding (always masked)", model_path)
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(source, tokenizer, extra=()) -> list[int]:
    """The stop set (docs/math.md §9): the generation config's eos id(s) ∪ tokenizer.eos_token_id ∪ `extra`, sorted.

    source: a model (its `generation_config`), a GenerationConfig, a model folder or hub id (its
    generation_config.json, else the one transformers derives from its config.json), or None. Chat models list
    their end-of-turn id there beside EOS; a sampler that stops on EOS alone runs past the end of the turn.
    `extra` (the user's --stop-token-ids) must be ids the model can emit: below its vocabulary size
    (`load_checks.check_reachable`); an id past it never stops anything, so it is refused.
    """
    config = getattr(source, "generation_config", source)
    if isinstance(config, (str, Path)):
        config = _generation_config_of(str(config))
    eos = getattr(config, "eos_token_id", None)
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    tokenizer_eos = getattr(tokenizer, "eos_token_id", None)  # tokenizer None: no eos of its own
    ids += [tokenizer_eos] if tokenizer_eos is not None else []
    extra = list(extra or ())
    for i in ids + extra:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise InfalignError(f"stop token ids must be integers >= 0, got {i!r}")
    check_reachable(extra, source, tokenizer)
    return sorted(set(ids + extra))


def _generation_config_of(path: str):
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: what from_pretrained of the model would derive
        try:
            return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
        except (OSError, ValueError):
            return None


def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes 4-bit layers run here, else a sentence saying why not (for the QLoRA error)."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError or a broken native library
        return f"bitsandbytes cannot be imported ({type(exc).__name__}: {exc}); install it with "\
               "`pip install 'offline-infalign[quant]'`"
    try:  # a real 4-bit matmul: import success alone says nothing about the native backend
        device = default_device()
        layer = bnb.nn.Linear4bit(8, 8, bias=True, quant_type="nf4", compute_dtype=torch.float32).to(device)
        layer.support_avx512bf16_for_cpu = False
        layer(torch.randn(2, 8, device=device))
    except Exception as exc:
        return f"bitsandbytes is installed but its 4-bit kernels fail here ({type(exc).__name__}: {exc})"
    return None


def lora_config(r: int = 16, alpha: int | None = None, dropout: float = 0.0,
                target_modules: str | list[str] = ALL_LINEAR):
    """peft LoraConfig for a causal LM; alpha defaults to 2r; target_modules 'all-linear' or module names."""
    from peft import LoraConfig

    if r < 1:
        raise InfalignError(f"lora_r must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise InfalignError(f"lora_dropout must be in [0, 1), got {dropout}")
    if isinstance(target_modules, (list, tuple)) and list(target_modules) == [ALL_LINEAR]:
        target_modules = ALL_LINEAR  # the CLI gives a list; 'all-linear' must stay a string for peft
    elif isinstance(target_modules, str) and target_modules != ALL_LINEAR:
        # peft reads one string as a regular expression over full module paths (`q_proj` would match nothing),
        # a list as module names: names are what the flag takes
        target_modules = [target_modules]
    return LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout,
                      target_modules=target_modules, bias="none", task_type="CAUSAL_LM")


def _disable_cpu_bf16_kernels(model) -> int:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base(model_path: str, *, qlora: bool = False, dtype=None, device_map=None,
              trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """The base causal LM (in eval mode), full precision or 4-bit nf4 for QLoRA; safetensors only unless
    `allow_pickle_weights`."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if qlora:
        problem = bitsandbytes_problem()
        if problem is not None:
            raise InfalignError(f"qlora=True needs bitsandbytes 4-bit layers, but {problem}; "
                                "train with qlora=False (plain LoRA) instead")
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
    model = from_pretrained(AutoModelForCausalLM, model_path, allow_pickle_weights=allow_pickle_weights, **kwargs)
    if qlora:
        _disable_cpu_bf16_kernels(model)
    return model.eval()


def load_policy(model_path: str, *, lora_r: int = 16, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                target_modules: str | list[str] = "all-linear", qlora: bool = False, dtype=None,
                device_map=None, gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                allow_pickle_weights: bool = False, full_finetune: bool = False):
    """Base model + a fresh LoRA adapter (B = 0, so the policy equals the base at step 0) and its tokenizer.

    Returns (PeftModel in train mode, tokenizer). Only LoRA parameters require grad.
    full_finetune: the base model itself, every parameter trainable (no adapter; not with qlora).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if full_finetune and qlora:
        raise InfalignError("full_finetune trains every weight; 4-bit (qlora) weights cannot be trained")
    tok = load_tokenizer(model_path, trust_remote_code, pad_token_as_eos=True)
    model = load_base(model_path, qlora=qlora, dtype=dtype, device_map=device_map,
                      trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    if full_finetune:
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        return model.train(), tok
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    model.config.use_cache = False
    check_target_modules(model, target_modules, model_path)
    try:
        with _peft_reads_deprecated_property():
            peft_model = get_peft_model(model, lora_config(lora_r, lora_alpha, lora_dropout, target_modules))
    except ValueError as exc:  # e.g. a target module of a type LoRA cannot wrap (peft names it)
        raise InfalignError(f"cannot add LoRA layers to model {str(model_path)!r} (target_modules "
                            f"{target_modules}): {one_line(exc)}") from None
    if qlora:
        _disable_cpu_bf16_kernels(peft_model)
    return peft_model, tok


_PEFT_NOISE = "`is_gradient_checkpointing` is deprecated"


@contextmanager
def _peft_reads_deprecated_property():
    """peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model, and
    transformers warns (FutureWarning) each time: third-party noise about third-party code, silenced here for this
    message only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_NOISE, category=FutureWarning)
        yield


def load_adapted(base_path: str, adapter_dir: str | Path, dtype=None, device_map=None,
                 trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """A trained adapter on its base model, for evaluation: (PeftModel in eval mode, tokenizer).

    Base and adapter weights load from safetensors only unless `allow_pickle_weights` (an adapter folder is
    the thing most often downloaded: PEFT would unpickle its adapter_model.bin).

    The tokenizer comes from the adapter folder (train saves it there) and falls back to the base model's.
    `policy.disable_adapter()` (a context manager) gives the base model without a second copy.
    A model folder instead (train's full_finetune output) loads as a `FullPolicy`: that model and the base, two
    copies, with the same `disable_adapter()`.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        if (adapter_dir / "config.json").is_file():  # a fully fine-tuned model (train --full-finetune)
            tok = load_tokenizer(str(adapter_dir), trust_remote_code, pad_token_as_eos=True)
            kw = dict(dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                      allow_pickle_weights=allow_pickle_weights)
            return FullPolicy(load_base(str(adapter_dir), **kw), load_base(base_path, **kw)).eval(), tok
        raise InfalignError(f"{str(adapter_dir)!r} is not a PEFT adapter folder (no adapter_config.json) nor a "
                            "model folder (no config.json)")
    check_safetensors(adapter_dir, allow_pickle_weights, "adapter", names=("adapter_model.safetensors",))
    check_adapter_config(adapter_dir)
    tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_path)
    tok = load_tokenizer(str(tok_dir), trust_remote_code, pad_token_as_eos=True)
    base = load_base(base_path, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                     allow_pickle_weights=allow_pickle_weights)
    where = f"adapter {str(adapter_dir)!r} (on base model {str(base_path)!r})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        except Exception as exc:  # a truncated adapter_model.safetensors (SafetensorError), modules the base lacks
            hint = ("; adapter_model.safetensors is damaged or truncated: train or copy the adapter again"
                    if type(exc).__name__ == "SafetensorError" else "")
            raise InfalignError(f"cannot load {where}: {type(exc).__name__}: {one_line(exc)}{hint}") from None
    for w in caught:
        if _PEFT_NOISE in str(w.message) and issubclass(w.category, FutureWarning):
            continue  # see _peft_reads_deprecated_property
        # peft only warns when the adapter file lacks weights of the LoRA layers its config adds (they would
        # stay at their initialization, B = 0: the base model); that adapter is refused.
        if "missing adapter keys" in str(w.message):
            raise InfalignError(f"{where} does not load: its adapter_model.safetensors lacks LoRA weights its "
                                f"adapter_config.json asks for ({one_line(w.message, 200)})")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model.eval(), tok


class FullPolicy(torch.nn.Module):
    """A fully fine-tuned policy beside its base model, used as evaluation uses a PeftModel: calls go to the
    policy, and inside `disable_adapter()` to the base (π_ref). Both models are held (inference only); decoding
    and log-prob code reach the active one through `get_base_model()`, `config` and `generation_config`."""

    def __init__(self, policy, base):
        super().__init__()
        self.policy, self.base, self._base_active = policy, base, False

    def get_base_model(self):
        return self.base if self._base_active else self.policy

    @property
    def config(self):
        return self.get_base_model().config

    @property
    def generation_config(self):
        return self.get_base_model().generation_config

    @contextmanager
    def disable_adapter(self):
        self._base_active = True
        try:
            yield
        finally:
            self._base_active = False

    def forward(self, *args, **kwargs):
        return self.get_base_model()(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.get_base_model().generate(*args, **kwargs)


def base_weights_dtype(model) -> str:
    """'nf4'/'fp4' for 4-bit base weights, else the dtype name of the (frozen) base parameters, e.g. 'float32'."""
    # A model with 4-bit layers was built by bitsandbytes, so it is already imported; importing it otherwise would
    # only print its CPU-kernel warnings into every sampling and training run.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                return str(getattr(module.weight, "quant_type", "nf4"))
    for name, p in model.named_parameters():
        if "lora_" not in name:
            return str(p.dtype).replace("torch.", "")
    return "float32"


def load_causal_lm(path: str, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                   pad_token_as_eos: bool = False, allow_pickle_weights: bool = False):
    """(model in eval mode on `device`, tokenizer) from a local folder or hub id; pad rule: `load_tokenizer`;
    safetensors weights only unless `allow_pickle_weights`."""
    from transformers import AutoModelForCausalLM

    # dtype 'auto': bf16 on a bf16-capable GPU, float32 otherwise
    device = default_device(device)
    check_safetensors(path, allow_pickle_weights)  # before the tokenizer: the refusal comes first
    tokenizer = load_tokenizer(path, trust_remote_code, pad_token_as_eos=pad_token_as_eos)
    model = from_pretrained(AutoModelForCausalLM, path, allow_pickle_weights=allow_pickle_weights,
                            dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer
