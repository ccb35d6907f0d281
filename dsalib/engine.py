"""Training engine: a language model's option distribution, made trainable.

:class:`OptionModel` wraps a causal LM, its tokenizer and an
:class:`~dsalib.lm.OptionRule`, and returns the option distribution of
prepared prompts, differentiable in the parameters a *strategy* trains:

- ``"last_layer"`` (paper default): the last transformer block, the final norm
  and the output layer's option rows.  Everything below the last block is
  frozen, so its output never changes: :meth:`OptionModel.prepare` runs the
  frozen prefix once per prompt and caches the last block's input hidden states
  (captured with a forward pre-hook; the rotary cos/sin are recomputed from the
  positions) in an LRU bounded in bytes, optionally also on disk.  Openings that
  several prompts share (a subgroup's background block) are run once and their
  key-value cache reused (:mod:`dsalib.prefix_tree`).  Each training
  step then runs only the last block, and only at the answer position: keys and
  values over the whole prompt, the query, attention output and MLP for the
  last token alone.  The output layer is an untied copy of the option-token rows
  of the LM head, so no gradient reaches the input embedding.  Supported blocks
  (tested on tiny configs): Llama-style (SmolLM2, Llama, Mistral, Qwen2, Qwen3)
  and Gemma-style sandwich norms (Gemma 2 and 3: q/k norms, sliding windows,
  soft-capping); every prepared batch is checked against the model's own
  forward pass, so an unsupported block fails loudly.  ``cache=False`` gives
  the plain path with the same trainable parameters (full forward every step).
- ``"lora"``: peft LoRA adapters on every block's attention projections; full
  forward each step.
- ``"full"``: every parameter; full forward each step.

Trained parameters are fp32 whatever the model's dtype (the frozen prefix keeps
it); a model sharded by accelerate works as long as the trained parameters are
resident (see :class:`OptionModel`).  The engine trains ``model`` in place (pass
``copy.deepcopy(model)`` to keep the original).  :meth:`OptionModel.export_model` returns a plain model whose
:func:`~dsalib.lm.option_probs` equal the engine's predictions.

:func:`train_loop` runs AdamW over batches of items with a caller's loss; it is
the one training loop of the library (Phase 1 and Phase 2 in :mod:`dsalib.train`
run on it).  It is seeded, and it runs unchanged under ``accelerate launch``
with several processes (each process takes a share of every batch's items;
gradients are summed across processes, so results match a single process up
to rounding; see the loss contract in its docstring).  :func:`predict_rows`
splits a prediction pass over the processes (:mod:`dsalib.distributed`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from dsalib.distributed import agreed, env_flag, fsdp_launched, gather_shards, largest, process_share
from dsalib.errors import DsaError
from dsalib.lm import (
    NonFiniteLogitsError,
    checkpoint_fingerprint,
    checkpoint_folder,
    OptionRule,
    check_finite,
    encode_prompts,
    label_log_probs,
    model_device,
    pad_left,
    pad_token_id,
    position_ids_from_mask,
)
from dsalib.prefix_tree import PrefixNode, plan_prefix_tree

STRATEGIES = ("last_layer", "lora", "full")


#: Option-probability tolerance of the shared-opening check when the prefix runs in half precision (bf16/fp16):
#: the shared and the whole-prompt pass are two computations of the prefix, each rounded in that precision.
SHARED_HALF_TOL = 5e-2


class _SharingFailed(Exception):
    """A shared-opening pass failed or disagreed with an unshared one; the engine falls back to the unshared pass."""


class EngineError(DsaError):
    """The engine cannot run this model, rule or input."""


# --------------------------------------------------------------------------- the last block


def _check_block(block: nn.Module) -> None:
    """Raise :class:`EngineError` unless the block has the structure the cached path computes."""
    attn = getattr(block, "self_attn", None)
    needs = [(block, "self_attn"), (block, "mlp"), (block, "input_layernorm"), (block, "post_attention_layernorm")]
    needs += [(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")] if attn is not None else []
    missing = [n for owner, n in needs if not hasattr(owner, n)]
    if missing:
        raise EngineError(
            f"the cached last-layer engine does not know blocks of type {type(block).__name__} "
            f"(missing {missing}); use OptionModel(..., cache=False) or strategy='lora'/'full'"
        )


@functools.lru_cache(maxsize=None)
def _passes_softcap(attn_class: type) -> bool:
    """Whether an attention class hands ``softcap`` to its attention function.

    Gemma 2 does; Gemma 3 has the config field but ignores it.
    """
    return "softcap=" in inspect.getsource(attn_class.forward)


def _attn_softcap(attn: nn.Module) -> float | None:
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap is None:
        cap = getattr(getattr(attn, "config", None), "attn_logit_softcapping", None)
    return cap if cap is not None and _passes_softcap(type(attn)) else None


def _sliding_window(attn: nn.Module) -> int | None:
    """The attention's window: its own attribute (Gemma, Qwen2), else the config's (Mistral)."""
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(getattr(attn, "config", None), "sliding_window", None)


def block_at_last_position(block: nn.Module, h: torch.Tensor, valid: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A decoder block's output at the last position only, (B, H).

    ``h`` (B, L, H) are the block's inputs, left-padded so that column L-1 is
    every row's last real token; ``valid`` (B, L) marks real tokens; ``cos`` and
    ``sin`` (B, L, D) are the rotary embeddings the block receives.  Keys and
    values use every position; the query, attention output and MLP only the last.
    """
    attn = block.self_attn
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    bsz, length, _ = h.shape
    hd = attn.head_dim
    x = block.input_layernorm(h)
    q = attn.q_proj(x[:, -1:]).view(bsz, 1, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(bsz, length, -1, hd).transpose(1, 2)
    v = attn.v_proj(x).view(bsz, length, -1, hd).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, _ = rope(q, q, cos[:, -1:], sin[:, -1:])
    _, k = rope(k, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # (B, heads, 1, L)
    cap = _attn_softcap(attn)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    keep = valid.bool()
    window = _sliding_window(attn)
    if window is not None:  # transformers: key j is visible from query i when i - j < window
        keep = keep & (torch.arange(length, device=h.device) > (length - 1) - window)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = attn.o_proj(torch.matmul(weights, v).transpose(1, 2).reshape(bsz, 1, -1))
    res = h[:, -1:]
    if hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm"):  # Gemma
        res = res + block.post_attention_layernorm(out)
        res = res + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(res)))
    else:  # Llama
        res = res + out
        res = res + block.mlp(block.post_attention_layernorm(res))
    return res[:, 0]


# --------------------------------------------------------------------------- precision and placement


class _Fp32BlockInputs:
    """Forward pre-hook on the trained last block of a half-precision model.

    The frozen prefix runs in the model's dtype (bf16 on a GPU); the last block,
    the final norm and the option head are trained in fp32.  This hook casts the
    hidden states at that boundary to fp32, recomputes the rotary (cos, sin) in
    fp32 from the position ids with the decoder's own rotary modules (so the
    cached path, which recomputes them the same way, sees the same values), and
    casts a floating attention mask to fp32.
    """

    def __init__(self, rotary: dict[str, nn.Module]):
        self.rotary = rotary

    def __call__(self, module, args, kwargs):
        if args:
            args = (args[0].float(),) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = kwargs["hidden_states"].float()
        h = args[0] if args else kwargs["hidden_states"]
        pos = kwargs.get("position_ids")
        for name, rotary in self.rotary.items():
            if kwargs.get(name) is not None:
                if pos is not None:
                    cos, sin = rotary(h, pos)
                    kwargs[name] = (cos.to(h.device), sin.to(h.device))
                else:
                    kwargs[name] = tuple(t.float() for t in kwargs[name])
        mask = kwargs.get("attention_mask")
        if torch.is_tensor(mask) and mask.is_floating_point():
            kwargs["attention_mask"] = mask.float()
        return args, kwargs


def _cast_input_to_weight(module, args):
    """Forward pre-hook on a half-precision output layer that follows an fp32 final norm."""
    return (args[0].to(module.weight.dtype),) + tuple(args[1:])


def _rotary_modules(decoder: nn.Module) -> dict[str, nn.Module]:
    """The decoder's rotary modules by the keyword argument of the block that carries their output."""
    found = {}
    if hasattr(decoder, "rotary_emb"):
        found["position_embeddings"] = decoder.rotary_emb
        found["position_embeddings_global"] = decoder.rotary_emb
    if hasattr(decoder, "rotary_emb_local"):  # Gemma 3: local rope on sliding layers
        found["position_embeddings_local"] = decoder.rotary_emb_local
    return found


def _block_rotary(decoder: nn.Module, block: nn.Module) -> nn.Module:
    """The rotary module whose (cos, sin) the last block uses."""
    if getattr(block.self_attn, "is_sliding", False) and hasattr(decoder, "rotary_emb_local"):
        return decoder.rotary_emb_local
    if hasattr(decoder, "rotary_emb"):
        return decoder.rotary_emb
    raise EngineError(
        f"the cached last-layer engine recomputes rotary embeddings with the decoder's rotary module, "
        f"but {type(decoder).__name__} has no rotary_emb; use OptionModel(..., cache=False) or strategy='lora'/'full'"
    )


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def _resident_device(named: dict[str, nn.Module], what: str) -> torch.device:
    """The one device that holds every parameter of ``named``; a clear error when they are offloaded or split."""
    devices = {}
    for prefix, module in named.items():
        for sub_name, sub in module.named_modules():
            if any(getattr(h, "offload", False) for h in _hooks(sub)):
                raise EngineError(
                    f"{what}: {prefix + ('.' + sub_name if sub_name else '')} is offloaded by accelerate "
                    f"(its weights are loaded only while it runs), so training it would be lost; keep it resident "
                    f"on one device (dsalib.lm.load_model(device_map=...) pins it), or give it room in max_memory"
                )
        for n, p in module.named_parameters():
            if p.device.type == "meta":
                raise EngineError(
                    f"{what}: parameter {prefix}.{n} is on the meta device (offloaded or never loaded); "
                    f"it is trained, so it must be resident: load with dsalib.lm.load_model(device_map=...), "
                    f"which pins the last block and the final norm to one device"
                )
            devices.setdefault(p.device, f"{prefix}.{n}")
    if len(devices) > 1:
        raise EngineError(
            f"{what} are spread over several devices ({', '.join(f'{v} on {k}' for k, v in devices.items())}); "
            f"pin them to one device (dsalib.lm.pinned_device_map)"
        )
    if not devices:
        raise EngineError(f"{what} have no parameters")
    return next(iter(devices))


def _resident_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """A parameter's values, read from accelerate's offload map when the module is offloaded."""
    t = getattr(module, name)
    if t is not None and t.device.type == "meta":
        for hook in _hooks(module):
            wmap = getattr(hook, "weights_map", None)
            try:
                if wmap is not None:
                    return wmap[name]
            except KeyError:  # a tied weight is stored once, under the other module's name
                pass
        raise EngineError(f"{type(module).__name__}.{name} is on the meta device and its offloaded values "
                          f"cannot be found; load the model with dsalib.lm.load_model(device_map=...)")
    return t


# --------------------------------------------------------------------------- the prefix cache

#: Default byte budget of the in-memory prefix cache (see :class:`PrefixCache`).
from dsalib.config import DEFAULT_PREFIX_CACHE_BYTES  # noqa: E402  (one place for the default)


class PrefixCache:
    """In-memory least-recently-used store of last-block inputs, bounded in bytes.

    ``budget_bytes`` None means unbounded.  An entry larger than the whole
    budget is not stored.  ``peak_bytes`` is the most the store ever held.
    """

    def __init__(self, budget_bytes: int | None):
        if budget_bytes is not None and (isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int)
                                         or budget_bytes < 0):
            raise EngineError(f"prefix_cache_bytes must be a non-negative integer or None, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.peak_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def get(self, key) -> torch.Tensor | None:
        t = self._entries.get(key)
        if t is not None:
            self._entries.move_to_end(key)
        return t

    def put(self, key, t: torch.Tensor) -> bool:
        """Store ``t`` (evicting the least recently used entries); False when it exceeds the whole budget."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        n = t.numel() * t.element_size()
        if self.budget_bytes is not None:
            if n > self.budget_bytes:
                return False
            while self.bytes + n > self.budget_bytes:
                _, old = self._entries.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
                self.evictions += 1
        self._entries[key] = t
        self.bytes += n
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


# --------------------------------------------------------------------------- the option model


class OptionModel(nn.Module):
    """A causal LM's option distribution for prepared prompts, trainable by a strategy.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM (trained in place) and its tokenizer.  It may
        be sharded by accelerate (``device_map``): the parameters a strategy
        trains must then be resident (never on ``meta``/offloaded; for
        ``last_layer`` the last block and final norm on one device).
    rule
        How the answer is read (:class:`~dsalib.lm.OptionRule`).  The cached
        ``last_layer`` engine needs ``scoring="single_token"``.
    strategy
        ``"last_layer"``, ``"lora"`` or ``"full"`` (see the module docstring).
    cache
        ``last_layer`` only: train from cached last-block inputs (default) or
        run the full forward every step (``False``, the plain path).
    lora_r, lora_alpha, lora_dropout, lora_target_modules
        LoRA settings (``lora`` only).
    batch_size
        Prompts per forward pass in :meth:`predict` and every no-grad pass.
    prefix_batch_size
        Prompts per frozen-prefix pass in :meth:`prepare` (default ``batch_size``).
    cache_dir
        Optional folder for an on-disk cache of last-block inputs, keyed by a
        fingerprint of the checkpoint (see :meth:`fingerprint`) and the prompt's
        token ids.
    prefix_cache_bytes
        Byte budget of the in-memory prefix cache (:class:`PrefixCache`, LRU;
        default :data:`DEFAULT_PREFIX_CACHE_BYTES`, None for unbounded).
    prefix_cache
        An existing :class:`PrefixCache` to use instead (``prefix_cache_bytes``
        is then ignored), shared with other option models of the same model,
        e.g. one per option rule (:class:`dsalib.llm_methods.LanguageModel`).
    seed
        Seeds the LoRA initialisation.
    verify_tol
        Largest allowed difference in option probabilities between the cached
        path and the model's own forward pass at :meth:`prepare` (default 1e-4;
        both run the same fp32 last block on the same prefix output).
    share_prefix, share_min_tokens
        ``last_layer`` with ``cache``: run the openings that several prompts
        share once and reuse their key-value cache for the rest of each prompt
        (default on; :mod:`dsalib.prefix_tree`), where that saves at least
        ``share_min_tokens`` token positions.  The default, 128, is about
        what an extra batch-1 pass costs: on two CPU cores with SmolLM2-135M,
        384 ESS9 prompts took 149 s with 64, 138 s with 128 and 151 s with 256.  The first shared batch is also
        checked against an unshared pass of one prompt (``verify_tol``).  The
        hidden states equal the unshared ones up to float rounding, at the
        level of batching prompts with different neighbours.

    fsdp
        Shard the model over the launched processes with FSDP2, one unit per
        decoder block (``lora`` and ``full`` only).  None (default): when
        ``accelerate launch`` runs several processes with an FSDP config
        (:func:`dsalib.distributed.fsdp_launched`) for ``lora``/``full``;
        ``last_layer`` is never sharded (its prefix pass needs the whole
        model).  See :func:`train_loop` for what a sharded model asks of a loss.

    Precision: whatever the model's dtype, the trained parameters are fp32
    (``last_layer``: the last block, final norm and option head are cast to
    fp32 in place; ``lora``: the adapters; ``full``: the whole model, which
    then runs under ``torch.autocast`` in the model's original half-precision
    dtype, i.e. fp32 master weights with bf16 compute).  The frozen prefix runs
    in the model's dtype; its output is cast to fp32 at the last block.
    """

    def __init__(self, model, tokenizer, rule: OptionRule, strategy: str = "last_layer", *,
                 cache: bool = True, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
                 lora_target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 batch_size: int = 16, prefix_batch_size: int | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 prefix_cache_bytes: int | None = DEFAULT_PREFIX_CACHE_BYTES, seed: int = 0,
                 verify_tol: float | None = None, share_prefix: bool = True, share_min_tokens: int = 128,
                 prefix_cache: PrefixCache | None = None, fsdp: bool | None = None):
        super().__init__()
        if strategy not in STRATEGIES:
            raise EngineError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        for name, value in (("batch_size", batch_size), ("prefix_batch_size", prefix_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EngineError(f"{name} must be a positive integer, got {value!r}")
        self.rule = rule
        self.options = self.rule.resolve(tokenizer)
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.cached = bool(cache) and strategy == "last_layer"
        self.batch_size = batch_size
        self.prefix_batch_size = prefix_batch_size or batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = seed
        self.lora_config = None
        # one in-memory cache may serve several option models of the same frozen model (their prefixes agree)
        self._lru = prefix_cache if prefix_cache is not None else PrefixCache(prefix_cache_bytes)
        model.eval()  # no dropout anywhere: the paper's setting has none to speak of
        for p in model.parameters():
            p.requires_grad_(False)
        self.prefix_dtype = model.get_input_embeddings().weight.dtype
        half = self.prefix_dtype != torch.float32
        self._autocast_dtype = None
        if strategy == "last_layer":
            if self.rule.scoring != "single_token":
                raise EngineError(
                    "the last_layer engine reads one token per option; use single-token labels "
                    "(e.g. letters A-K with leading_space=True) or strategy='lora'/'full' for multi_token scoring"
                )
            decoder = model.get_decoder()
            if not (hasattr(decoder, "layers") and hasattr(decoder, "norm")):
                raise EngineError(
                    f"the last_layer strategy expects a decoder with .layers and .norm (Llama/Gemma style); "
                    f"{type(model).__name__} has none; use strategy='lora' or 'full'"
                )
            block = decoder.layers[-1]
            if self.cached:
                _check_block(block)
                self._rotary = _block_rotary(decoder, block)
            self._train_device = _resident_device(
                {f"layers.{len(decoder.layers) - 1}": block, "norm": decoder.norm},
                "the last_layer strategy trains the last block and the final norm, which")
            block.float()
            decoder.norm.float()
            for p in list(block.parameters()) + list(decoder.norm.parameters()):
                p.requires_grad_(True)
            if half and not getattr(block, "_dsalib_fp32_inputs", False):
                block.register_forward_pre_hook(_Fp32BlockInputs(_rotary_modules(decoder)), with_kwargs=True)
                block._dsalib_fp32_inputs = True
                lm_head = model.get_output_embeddings()
                lm_head.register_forward_pre_hook(_cast_input_to_weight)
            self.head = _option_head(model, self.options.single_ids, self._train_device)
        elif strategy == "lora":
            from peft import LoraConfig, get_peft_model

            self.lora_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                          target_modules=list(lora_target_modules), bias="none")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = get_peft_model(model, self.lora_config)
            model.eval()
            for p in model.parameters():
                if p.requires_grad and p.dtype != torch.float32:  # peft keeps adapters in fp32; make sure
                    p.data = p.data.float()
        else:
            if half:  # fp32 master weights (cast below, after any sharding); the forward runs under autocast
                self._autocast_dtype = self.prefix_dtype
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        if strategy != "last_layer":
            offloaded = [n for n, p in model.named_parameters() if p.requires_grad and p.device.type == "meta"]
            if offloaded:
                raise EngineError(
                    f"the {strategy} strategy trains parameters that are on the meta device (offloaded by a "
                    f"device_map): {offloaded[:3]}; keep every layer resident (device_map over GPUs with "
                    f"max_memory, no CPU/disk offload); a model whose training state does not fit the GPUs needs "
                    f"FSDP (configs/accelerate/fsdp.yaml, see the README)"
                )
        # None: shard lora/full under an FSDP launch (last_layer keeps its whole model: its prefix pass needs it)
        self.fsdp = (fsdp_launched() and strategy != "last_layer") if fsdp is None else bool(fsdp)
        if self.fsdp:
            if strategy == "last_layer":
                raise EngineError("FSDP shards the lora and full strategies only; last_layer trains one block from the "
                                  "cached prefix and needs no sharding: launch it with configs/accelerate/multi_gpu.yaml")
            _shard_for_training(model, self.base_model.get_decoder())
        if strategy == "full" and half:
            model.float()  # after sharding, each process casts only its shard
        if strategy != "last_layer":
            self._train_device = model_device(model)
        self._input_device = model_device(self.base_model)
        self.verify_tol = verify_tol if verify_tol is not None else 1e-4
        if isinstance(share_min_tokens, bool) or not isinstance(share_min_tokens, int) or share_min_tokens < 1:
            raise EngineError(f"share_min_tokens must be a positive integer, got {share_min_tokens!r}")
        self.share_prefix = bool(share_prefix)
        self.share_min_tokens = share_min_tokens
        self._sharing_checked: set[int] = set()  # depths of the sharing plan checked against an unshared pass
        self.prefix_shared_passes = 0  # batch-1 passes over shared openings (see dsalib.prefix_tree)
        self._ids: list[list[int]] = []
        self._row_options: np.ndarray | None = None  # options of each prepared prompt (None: all of the rule's)
        self._fingerprint: str | None = None
        self._warned_budget = False
        self.prefix_seconds = 0.0  # time spent running the frozen prefix
        self.prefix_computed = 0  # prompts whose prefix was run (not found in a cache), recomputations included
        self.prefix_loaded = 0  # prompts whose prefix was read from cache_dir

    # ------------------------------------------------------------------ parts

    @property
    def base_model(self):
        """The underlying transformers model (without the peft wrapper)."""
        return self.model.get_base_model() if self.strategy == "lora" else self.model

    @property
    def decoder(self):
        return self.base_model.get_decoder()

    @property
    def device(self) -> torch.device:
        """Where training happens: the last block's device (``last_layer``), else the input embedding's."""
        return self._train_device

    @property
    def n_prompts(self) -> int:
        return len(self._ids)

    @property
    def prefix_cache(self) -> PrefixCache:
        """The in-memory prefix cache (its ``bytes``, ``peak_bytes``, ``budget_bytes``, ``evictions``)."""
        return self._lru

    def parameters_to_train(self) -> list[nn.Parameter]:
        """The parameters the strategy trains."""
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict:
        """Settings for a run's outputs."""
        n_train = sum(p.numel() for p in self.parameters_to_train())
        return {
            "strategy": self.strategy, "cached": self.cached, "rule": self.rule.to_dict(),
            "model": getattr(self.base_model.config, "_name_or_path", None),
            "trainable_parameters": int(n_train),
            "prefix_dtype": str(self.prefix_dtype).replace("torch.", ""),
            "trainable_dtype": "float32",
            "autocast_dtype": None if self._autocast_dtype is None else str(self._autocast_dtype).replace("torch.", ""),
            "prefix_cache_budget_bytes": self._lru.budget_bytes,
            **({"fsdp_processes": process_share()[1]} if self.fsdp else {}),
            "lora": None if self.lora_config is None else {
                "r": self.lora_config.r, "alpha": self.lora_config.lora_alpha,
                "dropout": self.lora_config.lora_dropout, "targets": sorted(self.lora_config.target_modules)},
        }

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Copies of the trainable parameters only (e.g. to keep the best epoch)."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, **kwargs):
        """Load trainable parameters saved by :meth:`state_dict`."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if set(params) != set(state_dict):
            missing, extra = sorted(set(params) - set(state_dict)), sorted(set(state_dict) - set(params))
            raise EngineError(f"state dict does not match the trainable parameters: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state_dict[n])

    # ------------------------------------------------------------------ prompts

    def prepare(self, prompts: Sequence[str], progress: bool = False,
                n_options: Sequence[int] | None = None) -> "OptionModel":
        """Tokenise ``prompts`` (checked against the rule and the context) and,
        for the cached ``last_layer`` engine, cache their last-block inputs.

        ``n_options``: the number of options of each prompt's question, when
        questions with different numbers of options are trained together (the
        rule has the labels of the largest).  A prompt with ``k`` options is
        normalised over the first ``k`` labels only: the other labels get
        probability 0 (their logits are masked), so each row is exactly the
        softmax over its own question's options.  None: every prompt has all
        of the rule's options.

        Indices passed to :meth:`forward` refer to this list.  Prompts seen
        before (in memory, or in ``cache_dir``) are not recomputed.

        When the prompts' cached inputs exceed the in-memory budget
        (``prefix_cache_bytes``), the least recently used entries are evicted;
        a later step that needs an evicted entry reads it back from
        ``cache_dir`` if there is one, else recomputes its prefix (correct, but
        as slow as the plain path for that batch; a warning says so once).
        """
        self._row_options = _row_options(n_options, len(prompts), self.rule.n_options)
        self._ids = encode_prompts(self.tokenizer, prompts, self.rule, model=self.base_model)
        if not self.cached:
            return self
        todo, seen = [], set()
        for i, seq in enumerate(self._ids):
            key = tuple(seq)
            if key in seen or key in self._lru:
                continue
            seen.add(key)
            if self.cache_dir is None or not self._disk_path(seq).is_file():
                todo.append(i)
        self._compute_prefix(todo, progress)
        budget = self._lru.budget_bytes
        if budget is not None and self.cache_dir is None and not self._warned_budget:
            need = self.prefix_bytes_per_token() * sum(len(s) for s in {tuple(s): s for s in self._ids}.values())
            if need > budget:
                warnings.warn(
                    f"the prepared prompts' prefix cache needs about {need / 2**30:.2f} GiB, more than "
                    f"prefix_cache_bytes={budget} ({budget / 2**30:.2f} GiB): evicted entries will be recomputed "
                    f"at every step that needs them; raise prefix_cache_bytes or set cache_dir", stacklevel=2)
                self._warned_budget = True
        return self

    def prefix_bytes_per_token(self) -> int:
        """Bytes one prompt token's cached last-block input takes (hidden size x the prefix dtype)."""
        return self.decoder.layers[-1].input_layernorm.weight.shape[-1] * torch.finfo(self.prefix_dtype).bits // 8

    @torch.no_grad()
    def _compute_prefix(self, rows: list[int], progress: bool = False, collect: bool = False) -> dict[int, torch.Tensor]:
        """Run the frozen prefix of ``rows``, check the cached path against the model's own forward pass,
        and store the last block's inputs (memory budget permitting, and on disk).  Returns the rows'
        entries when ``collect``.

        With ``share_prefix`` the openings that several prompts share are run once (batch 1) and their
        key-value cache is reused for the rest of each prompt (:mod:`dsalib.prefix_tree`); prompts that
        share nothing worth sharing run in left-padded batches of ``prefix_batch_size``, as without it.
        """
        from .progress import bar as tqdm

        got: dict[int, torch.Tensor] = {}
        if not rows:
            return got
        start = time.perf_counter()
        rows = list(dict.fromkeys(rows))
        if self.share_prefix and len(rows) > 1:
            plan = plan_prefix_tree({i: self._ids[i] for i in rows}, self.share_min_tokens)
        else:
            plan = PrefixNode((), 0, rows, [])
        nodes = list(plan.walk())
        bar = tqdm(total=len(rows), desc="prefix cache", disable=not progress)
        try:
            self._run_prefix_node(plan, None, got, collect, bar)
        except _SharingFailed as err:  # the unshared pass is the reference: use it for this model from now on
            warnings.warn(f"{err}; computing the frozen prefix prompt by prompt instead (share_prefix=False)",
                          stacklevel=2)
            self.share_prefix = False
            got.clear()
            bar.reset()
            nodes = [plan]
            self._run_prefix_node(PrefixNode((), 0, rows, []), None, got, collect, bar)
        finally:
            bar.close()
        self.prefix_seconds += time.perf_counter() - start
        self.prefix_computed += len(rows)
        self.prefix_shared_passes += len(nodes) - 1
        return got

    def _prefix_pass(self, input_ids, mask, position_ids, past=None, use_cache: bool = False):
        """One frozen-prefix forward pass: (last block's inputs in the model's dtype, model output).
        ``use_cache``: return the key-value cache (the model's own kind, extending ``past`` if given)."""
        captured: dict[str, Any] = {}

        def hook(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]

        # prepend: capture the prefix output in the model's dtype, before it is cast to fp32
        handle = self.decoder.layers[-1].register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
        try:
            out = self.decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                               past_key_values=past, use_cache=use_cache or past is not None)
        finally:
            handle.remove()
        return captured["h"].to(self.device, self.prefix_dtype), out

    def _whole_prompt_pass(self, seqs):
        """Prompts ``seqs`` run whole, left-padded: (last block's inputs, final hidden state at the answer slot)."""
        input_ids, mask = pad_left(seqs, pad_token_id(self.tokenizer), self._input_device)
        h, out = self._prefix_pass(input_ids, mask, position_ids_from_mask(mask))
        return h, out.last_hidden_state[:, -1]

    def _shared_pass(self, *args, **kwargs):
        """:meth:`_prefix_pass` on a shared opening's key-value cache; a failure there (a cache or mask this
        transformers version or model does not support) becomes :class:`_SharingFailed`, not an answer."""
        try:
            return self._prefix_pass(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except (TypeError, ValueError, AttributeError, IndexError, RuntimeError, NotImplementedError) as err:
            raise _SharingFailed(f"running a prompt on its shared opening's key-value cache failed "
                                 f"({type(err).__name__}: {err})") from err

    def _run_prefix_node(self, node: PrefixNode, parent, got: dict, collect: bool, bar, level: int = 0) -> None:
        """Compute ``node``'s shared opening on top of ``parent`` = (key-value cache, last-block inputs of
        the path so far), then its leaves in batches, then its children (depth first)."""
        dev = self._input_device
        path = parent
        if node.tokens:
            depth = node.depth
            ids = torch.tensor([node.tokens], dtype=torch.long, device=dev)
            cache = copy.deepcopy(parent[0]) if parent is not None else None  # siblings reuse the parent's
            positions = torch.arange(depth, node.end, device=dev)[None]
            h, out = self._shared_pass(ids, torch.ones((1, node.end), dtype=torch.long, device=dev),
                                       positions, cache, use_cache=True)
            path = (out.past_key_values, h[0] if parent is None else torch.cat([parent[1], h[0]]))
            del out
        leaves = sorted(node.leaves, key=lambda i: (len(self._ids[i]), self._ids[i]))
        size = self.prefix_batch_size
        for s in range(0, len(leaves), size):
            chunk = leaves[s : s + size]
            seqs = [self._ids[i] for i in chunk]
            if path is None:  # from scratch: left-padded, the answer slot in the last column
                h, answer = self._whole_prompt_pass(seqs)
                entries = [h[r, -len(seq):].clone() for r, seq in enumerate(seqs)]
            else:  # on the shared opening: the rest of each prompt, right-padded after the opening
                end = node.end
                rest = [seq[end:] for seq in seqs]
                n = max(len(t) for t in rest)
                input_ids = torch.full((len(rest), n), pad_token_id(self.tokenizer), dtype=torch.long)
                mask = torch.zeros((len(rest), end + n), dtype=torch.long)
                mask[:, :end] = 1
                for r, t in enumerate(rest):
                    input_ids[r, : len(t)] = torch.tensor(list(t), dtype=torch.long)
                    mask[r, end : end + len(t)] = 1
                cache = copy.deepcopy(path[0])
                if len(rest) > 1:
                    if not hasattr(cache, "batch_repeat_interleave"):
                        raise _SharingFailed(f"this transformers version's {type(cache).__name__} cannot be "
                                             "repeated over a batch")
                    cache.batch_repeat_interleave(len(rest))
                positions = torch.arange(end, end + n, device=dev)[None].expand(len(rest), n)
                h, out = self._shared_pass(input_ids.to(dev), mask.to(dev), positions, cache)
                last = torch.tensor([len(t) - 1 for t in rest], device=out.last_hidden_state.device)
                answer = out.last_hidden_state[torch.arange(len(rest), device=last.device), last]
                entries = [torch.cat([path[1], h[r, : len(t)]]) for r, t in enumerate(rest)]
            reference = self._head_log_probs(answer.to(self.device), chunk)
            h = out = None  # free the batch before the check
            self._check_prefix_entries(entries, chunk, reference, shared_level=level if path is not None else None)
            for row, seq, entry in zip(chunk, seqs, entries):
                self._lru.put(tuple(seq), entry)
                if self.cache_dir is not None:
                    self._save_to_disk(seq, entry)
                if collect:
                    got[row] = entry
            bar.update(len(chunk))
        for child in node.children:
            self._run_prefix_node(child, path, got, collect, bar, level + 1)

    def _check_prefix_entries(self, entries, rows, reference, shared_level: int | None) -> None:
        """The first shared batch at each depth of the sharing plan must reproduce an unshared forward pass
        of one prompt (else :class:`_SharingFailed`); every batch's cached last-layer path must reproduce
        the model's own forward pass (else :class:`EngineError`)."""
        if shared_level is not None and shared_level not in self._sharing_checked:
            seq = self._ids[rows[0]]
            _, answer = self._whole_prompt_pass([seq])
            plain = self._head_log_probs(answer.to(self.device), rows[:1])
            diff = float((plain.exp() - reference[:1].exp()).abs().max())
            # two different computations of the whole prefix: in half precision they differ by its rounding
            tol = self.verify_tol if self.prefix_dtype == torch.float32 else max(self.verify_tol, SHARED_HALF_TOL)
            if diff > tol:
                raise _SharingFailed(
                    f"running a prompt on its shared opening's key-value cache disagrees with running it whole "
                    f"by {diff:.2e} in option probability (tolerance {tol:.0e}) for "
                    f"{type(self.base_model).__name__}")
            self._sharing_checked.add(shared_level)
        block = self.decoder.layers[-1]
        cached = self._cached_log_probs(entries, rows)
        diff = float((cached.exp() - reference.exp()).abs().max())
        if diff > self.verify_tol:
            raise EngineError(
                f"the cached last-layer path disagrees with the model's forward pass by {diff:.2e} in "
                f"option probability (tolerance {self.verify_tol:.0e}) for {type(block).__name__}; "
                f"use OptionModel(..., cache=False) or strategy='lora'/'full', and report this model"
            )

    def _entries_for(self, rows: Sequence[int]) -> list[torch.Tensor]:
        """The cached last-block inputs of ``rows``: from memory, else ``cache_dir``, else recomputed."""
        got: dict[int, torch.Tensor] = {}
        missing = []
        for i in dict.fromkeys(rows):
            key = tuple(self._ids[i])
            t = self._lru.get(key)
            if t is None and self.cache_dir is not None:
                t = self._load_from_disk(self._ids[i])
            if t is None:
                missing.append(i)
            else:
                got[i] = t
        if missing:
            got.update(self._compute_prefix(missing, collect=True))
        return [got[i] for i in rows]

    # ------------------------------------------------------------------ on-disk cache

    def fingerprint(self) -> str:
        """Key of the frozen prefix for the on-disk cache.

        It hashes the checkpoint's files (:func:`dsalib.lm.checkpoint_fingerprint`:
        config, weight files' names, sizes, modification times and safetensors
        headers, the hub blob names; no tensor is read), the model's config and
        the prefix dtype.  It assumes the frozen weights in memory are the
        checkpoint's (this engine never changes them).  A model built in memory
        from a config has no files: then the frozen weights below the last block
        are hashed, which needs them resident (an offloaded model without files
        is an :class:`EngineError`).
        """
        if self._fingerprint is None:
            model = self.base_model
            digest = hashlib.sha256(b"dsalib-prefix-v2:" + str(self.prefix_dtype).encode())
            digest.update(model.config.to_json_string().encode())
            folder = checkpoint_folder(model)
            files = checkpoint_fingerprint(folder) if folder is not None else None
            if files is not None:
                digest.update(files.encode())
            else:
                frozen = [self.decoder.embed_tokens] + list(self.decoder.layers[:-1])
                tensors = [(n, t) for m in frozen for n, t in list(m.named_parameters()) + list(m.named_buffers())]
                if any(t.device.type == "meta" for _, t in tensors):
                    raise EngineError(
                        "the on-disk prefix cache needs a key for the frozen weights: this model was built in "
                        "memory (no checkpoint files) and is offloaded, so its weights cannot be hashed; load it "
                        "from a folder or hub id, or use cache_dir=None"
                    )
                for name, t in tensors:
                    digest.update(name.encode())
                    digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _disk_path(self, seq: Sequence[int]) -> Path:
        key = hashlib.sha256((self.fingerprint() + ":" + ",".join(map(str, seq))).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def _load_from_disk(self, seq: Sequence[int]) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self._disk_path(seq)
        if not path.is_file():
            return None
        h = load_file(str(path), device=str(self.device))["h"]
        if h.shape[0] != len(seq):
            raise EngineError(f"the prefix cache file {path} holds {h.shape[0]} positions for a prompt of "
                              f"{len(seq)} tokens; delete it (the cache folder is corrupt)")
        self._lru.put(tuple(seq), h)
        self.prefix_loaded += 1
        return h

    def _save_to_disk(self, seq: Sequence[int], h: torch.Tensor) -> None:
        """Only the hidden states: the rotary tables are recomputed from the positions."""
        from safetensors.torch import save_file

        path = self._disk_path(seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"h": h.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: readers never see a half-written file

    # ------------------------------------------------------------------ forward

    def _head_log_probs(self, hidden: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        logits = self.head(hidden.float())
        cap = getattr(self.base_model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        logits = logits.float()
        check_finite(logits, "option logits", rows=list(rows))
        return torch.log_softmax(self._mask_options(logits, rows), dim=-1)

    def _mask_options(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Logits of labels beyond each row's number of options set to -inf (see :meth:`prepare`)."""
        if self._row_options is None:
            return logits
        k = torch.as_tensor(self._row_options[list(rows)], device=logits.device)
        beyond = torch.arange(logits.shape[-1], device=logits.device)[None, :] >= k[:, None]
        return logits.masked_fill(beyond, float("-inf"))

    def _cached_log_probs(self, entries: Sequence[torch.Tensor], rows: Sequence[int]) -> torch.Tensor:
        """The last block (fp32) at the answer position from cached inputs; rotary recomputed in fp32."""
        length = max(e.shape[0] for e in entries)
        bsz = len(entries)
        dev = self.device
        h = torch.zeros((bsz, length, entries[0].shape[-1]), dtype=torch.float32, device=dev)
        valid = torch.zeros((bsz, length), dtype=torch.bool, device=dev)
        for r, e in enumerate(entries):
            n = e.shape[0]
            h[r, -n:], valid[r, -n:] = e, True
        cos, sin = self._rotary(h, position_ids_from_mask(valid))
        out = block_at_last_position(self.decoder.layers[-1], h, valid, cos.to(dev), sin.to(dev))
        return self._head_log_probs(self.decoder.norm(out), rows)

    def _index(self, idx) -> list[int]:
        rows = idx.tolist() if torch.is_tensor(idx) else list(idx)
        if not self._ids:
            raise EngineError("call prepare(prompts) before asking for option probabilities")
        bad = [i for i in rows if not 0 <= int(i) < len(self._ids)]
        if bad:
            raise EngineError(f"prompt indices {bad[:5]} are out of range: {len(self._ids)} prompts are prepared")
        return [int(i) for i in rows]

    def forward(self, idx) -> torch.Tensor:
        """Log option probabilities (B, K) of prepared prompts ``idx``, normalised over the options."""
        rows = self._index(idx)
        if self.cached:
            return self._cached_log_probs(self._entries_for(rows), rows)
        input_ids, mask = pad_left([self._ids[i] for i in rows], pad_token_id(self.tokenizer), self._input_device)
        if self.strategy == "last_layer":  # the plain path: full forward, same trainable parameters
            out = self.decoder(input_ids=input_ids, attention_mask=mask,
                               position_ids=position_ids_from_mask(mask), use_cache=False)
            return self._head_log_probs(out.last_hidden_state[:, -1].to(self.device), rows)
        with torch.autocast(self._input_device.type, dtype=self._autocast_dtype or torch.float32,
                            enabled=self._autocast_dtype is not None):
            logp = label_log_probs(self.model, input_ids, mask, self.options, rows=rows)
        return torch.log_softmax(self._mask_options(logp.float(), rows), dim=-1)

    def log_probs(self, idx, grad: bool = True) -> torch.Tensor:
        """:meth:`forward`, with or without autograd; without, in batches of ``batch_size``."""
        if grad:
            return self(idx)
        with torch.no_grad():
            return self._batched(self._index(idx), self.batch_size)

    def _batched(self, rows: list[int], size: int) -> torch.Tensor:
        """Log option probabilities of ``rows``, ``size`` prompts per forward pass.

        Under FSDP every forward pass gathers the sharded weights from all
        processes, so every process must run as many passes as the busiest
        one: a process with fewer batches runs extra passes on prompt 0 and
        drops them.
        """
        chunks = [rows[s : s + size] for s in range(0, len(rows), size)]
        idle = largest(len(chunks)) - len(chunks) if self.fsdp else 0  # collective: before any forward pass
        parts = [self(c) for c in chunks]
        for _ in range(idle):
            self._idle_forward()
        return torch.cat(parts) if parts else torch.zeros((0, self.rule.n_options), device=self.device)

    def _idle_forward(self) -> None:
        """One forward pass whose result is dropped: joins the other processes' FSDP collectives."""
        if not self._ids:
            raise EngineError("under FSDP every process needs at least one prepared prompt; call prepare(prompts) "
                              "on every process before predicting")
        self([0])

    def probs(self, idx, grad: bool = True) -> torch.Tensor:
        """Option probabilities (B, K) of prepared prompts ``idx``."""
        return self.log_probs(idx, grad).exp()

    @torch.no_grad()
    def predict(self, idx=None, batch_size: int | None = None) -> torch.Tensor:
        """Option probabilities of prepared prompts (all by default), batched, no autograd."""
        rows = self._index(range(self.n_prompts) if idx is None else idx)
        return self._batched(rows, batch_size or self.batch_size).exp()

    # ------------------------------------------------------------------ export

    @torch.no_grad()
    def export_model(self):
        """The trained model as a plain transformers model.

        ``last_layer``: unties the LM head (a copy of the embedding) and writes
        the trained option rows into it, so :func:`~dsalib.lm.option_probs` of the
        returned model equals :meth:`predict` (other rows keep their values).  A
        half-precision head becomes an fp32 copy, so the trained rows keep their
        precision.  ``lora`` returns the peft model, ``full`` the model itself;
        under FSDP that is the sharded module, which every process must call
        together (gather it with ``torch.distributed.checkpoint`` to save it).
        """
        if self.strategy != "last_layer":
            return self.model
        model = self.model
        lm_head = model.get_output_embeddings()
        if lm_head.weight.device.type == "meta":
            raise EngineError("export_model writes the option rows into the output layer, which is offloaded; "
                              "keep lm_head resident in the device_map")
        tied = lm_head.weight is model.get_input_embeddings().weight
        if tied or lm_head.weight.dtype != torch.float32:
            lm_head.weight = nn.Parameter(lm_head.weight.detach().float().clone(), requires_grad=False)
            if lm_head.bias is not None:
                lm_head.bias = nn.Parameter(lm_head.bias.detach().float().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        ids = torch.tensor(self.options.single_ids, device=lm_head.weight.device)
        lm_head.weight[ids] = self.head.weight.to(lm_head.weight)
        if self.head.bias is not None:
            lm_head.bias[ids] = self.head.bias.to(lm_head.bias)
        return model


def check_fsdp_settings() -> None:
    """Refuse the accelerate FSDP settings the engine cannot honour (read from the launch environment).

    - ``fsdp_offload_params: true``: not supported.
    - ``fsdp_reshard_after_forward: false``: a no-grad pass would leave the
      weights gathered, and the engine's copies of the trainable parameters
      (best epoch, initial weights) would then read and write the gathered
      buffers instead of the shards.
    - ``fsdp_cpu_ram_efficient_loading: true``: transformers then loads the real
      weights on local rank 0 only and leaves the other processes' weights
      uninitialised, for ``accelerator.prepare`` to broadcast, which the engine
      does not call.
    """
    wrong = {"fsdp_offload_params: true": env_flag("FSDP_OFFLOAD_PARAMS", False),
             "fsdp_reshard_after_forward: false": not env_flag("FSDP_RESHARD_AFTER_FORWARD", True),
             "fsdp_cpu_ram_efficient_loading: true": env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING", False)}
    bad = [k for k, v in wrong.items() if v]
    if bad:
        raise EngineError(f"the engine cannot shard with {', '.join(bad)} in the accelerate config; use the values of "
                          "configs/accelerate/fsdp.yaml (offload false, reshard after forward true, cpu-RAM-efficient "
                          "loading false)")


def _shard_for_training(model: nn.Module, decoder: nn.Module) -> None:
    """Shard ``model`` over the launched processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    Each decoder block is one unit (its weights are gathered for its forward
    and backward pass, then freed), and the rest (embeddings, final norm,
    output layer) is the root unit.  The parameters stay in the dtype the
    engine gave them (fp32 master weights), so the gathers move fp32; half
    precision is the engine's autocast.  FSDP2 whatever ``fsdp_version`` says;
    settings the engine cannot honour are refused (:func:`check_fsdp_settings`).
    The model is moved to this process's accelerator device shard by shard, so
    it may be loaded on the CPU.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from dsalib.distributed import state

    if process_share()[1] < 2:
        raise EngineError("fsdp=True shards the model over the processes of an accelerate launch, and this is a "
                          "single process; launch with configs/accelerate/fsdp.yaml and several processes")
    check_fsdp_settings()
    placed = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(placed) > 1:
        raise EngineError(f"FSDP shards the model over the processes, but it was loaded with a device_map over "
                          f"{sorted(placed)}; load it on one device (no device_map) under an FSDP launch")
    if not (hasattr(decoder, "layers") and len(decoder.layers)):
        raise EngineError(f"FSDP wraps each decoder block; {type(decoder).__name__} has no .layers")
    mesh = init_device_mesh(state().device.type, (process_share()[1],))
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def _row_options(n_options, n_prompts: int, most: int) -> np.ndarray | None:
    """:meth:`OptionModel.prepare`'s ``n_options`` checked: one whole number in 2..``most`` per prompt, or None."""
    if n_options is None:
        return None
    k = np.asarray(list(n_options))
    if k.shape != (n_prompts,):
        raise EngineError(f"n_options must give one number of options per prompt ({n_prompts}), got {k.shape[0]}")
    if k.size and (not np.issubdtype(k.dtype, np.integer) or k.min() < 2 or k.max() > most):
        raise EngineError(f"each prompt's number of options must be a whole number from 2 to the rule's {most}; "
                          f"got values from {k.min()} to {k.max()}")
    return None if k.size and (k == most).all() else k.astype(np.int64)


def _option_head(model, ids: Sequence[int], device: torch.device) -> nn.Linear:
    """An untied fp32 copy of the LM head's rows for the option tokens, on ``device``."""
    lm_head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = lm_head.weight is embed.weight
    try:
        weight = _resident_weight(lm_head, "weight")
    except EngineError:
        if not tied:
            raise
        weight = _resident_weight(embed, "weight")
    bias = _resident_weight(lm_head, "bias") if getattr(lm_head, "bias", None) is not None else None
    head = nn.Linear(weight.shape[1], len(ids), bias=bias is not None, device=device, dtype=torch.float32)
    rows = torch.tensor(list(ids), device=weight.device)
    with torch.no_grad():
        head.weight.copy_(weight[rows].float())
        if bias is not None:
            head.bias.copy_(bias[rows.to(bias.device)].float())
    head.weight.requires_grad_(True)
    return head



# --------------------------------------------------------------------------- training loop


@dataclass
class TrainResult:
    """What :func:`train_loop` did."""

    step_loss: list[float] = field(default_factory=list)  # the whole batch's loss (summed over processes)
    epoch_loss: list[float] = field(default_factory=list)  # mean step loss per epoch
    eval_history: list[float] = field(default_factory=list)  # [initial score (eval_initial),] score after each epoch
    best_epoch: int | None = None  # epoch whose parameters were kept (with eval_fn); 0 = the initial parameters
    stopped_early: bool = False
    epochs_run: int = 0
    seconds: float = 0.0
    seconds_per_step: float = float("nan")
    n_processes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def predict_rows(option_model, idx) -> torch.Tensor:
    """:meth:`OptionModel.predict` of prepared prompts ``idx``, each process predicting its share.

    Every process gets all rows (:func:`dsalib.distributed.gather_shards`); in a single process
    this is ``option_model.predict(idx)``.
    """
    rows = [int(i) for i in (idx.tolist() if hasattr(idx, "tolist") else idx)]
    rank, world = process_share()
    share = rows[rank::world]
    local = (option_model.predict(share) if share or getattr(option_model, "fsdp", False)  # FSDP: an idle process joins
             else torch.zeros((0, option_model.rule.n_options), device=option_model.device))
    return gather_shards(local, len(rows))


def train_loop(option_model: OptionModel, batches, loss_fn: Callable[[OptionModel, list], torch.Tensor], *,
               epochs: int = 1, lr: float = 5e-5, weight_decay: float = 0.01, seed: int = 0,
               max_grad_norm: float | None = None, eval_fn: Callable[[OptionModel], float] | None = None,
               eval_initial: bool = False, min_improvement: float = 0.0, patience: int | None = None,
               restore_best: bool = True, accelerator=None, progress: bool | None = True,
               desc: str = "train") -> TrainResult:
    """Train ``option_model.parameters_to_train()`` with AdamW; the one training loop of the library.

    ``batches`` is a sequence of batches (each a sequence of items of any kind),
    or a callable ``epoch -> batches``, called once per epoch in order
    (0, 1, ...), e.g. to reshuffle per epoch.  Every process must build the same
    batches (seed any shuffling).

    **The loss contract.**  ``loss_fn(option_model, items)`` returns a scalar
    that is a *sum over its items*, and each item's weight already includes
    the division by the whole batch's normaliser (e.g. ``1 / len(batch)`` for a
    mean, or ``n_i / Σ n`` over the batch for a count-weighted mean), computed
    before the batch is split over processes.  With several processes each
    one gets ``items[rank::world]`` and the gradients are summed, so one
    process and N processes give the same gradient (up to rounding): the loss
    of a batch equals the sum of the losses of its process shares.
    ``loss_fn`` may call ``option_model.log_probs`` as often as it likes, with
    ``grad=False`` for detached references.

    **FSDP.**  When the option model is sharded (``option_model.fsdp``: a
    ``lora``/``full`` model under an FSDP launch), every forward and backward
    pass gathers weights from all processes, so all of them must run the
    same passes in the same order.  The loop and the model see to it: a
    process without items in a batch runs ``loss_fn`` on the batch's first
    item times 0, and no-grad passes are padded to the busiest process's
    number of batches (:meth:`OptionModel.log_probs`, :meth:`OptionModel.predict`).
    ``loss_fn`` must therefore call the model the same number of times
    whatever its items (Phase 1: once; Phase 2: twice, or once with
    ``reference="phase1"``; the same on every process).  FSDP averages the
    gradients over the processes; the loop scales each process's loss by
    their number, so the loss contract above still holds.

    With ``eval_fn`` (lower is better) a score is taken after every epoch (and
    before the first when ``eval_initial``, so the initial parameters can win:
    ``best_epoch == 0``).  A score improves on the best one when it is lower by
    more than ``min_improvement``; training stops after ``patience`` epochs
    without improvement, and the best epoch's parameters are restored when
    ``restore_best``.  The main process's score decides on every process.

    ``epochs=0`` trains nothing (the initial score is still taken with
    ``eval_initial``).  Seeded: the same inputs and seed give the same result.
    Under ``accelerate launch`` pass nothing extra: an
    :class:`accelerate.Accelerator` is created (or pass ``accelerator``).
    ``progress=None`` shows the bar only on a terminal.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from .progress import bar as tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise EngineError(f"epochs must be a whole number ≥ 0, got {epochs!r}")
    if patience is not None and patience < 0:
        raise EngineError(f"patience must be ≥ 0 or None, got {patience}")
    if min_improvement < 0:
        raise EngineError(f"min_improvement must be ≥ 0, got {min_improvement}")
    if eval_initial and eval_fn is None:
        raise EngineError("eval_initial=True needs an eval_fn")
    dev = option_model.device
    acc = accelerator or Accelerator(cpu=dev.type == "cpu")
    sharded = str(getattr(acc, "distributed_type", "")).rsplit(".", 1)[-1]
    if sharded in ("FSDP", "DEEPSPEED", "MEGATRON_LM") and not (sharded == "FSDP" and option_model.fsdp):
        raise EngineError(
            f"under an accelerate config with distributed_type {sharded} this option model is not sharded, so every "
            "process would still hold the whole model. FSDP shards the lora and full strategies (their OptionModel "
            "shards itself under an FSDP launch); DeepSpeed is not supported. Launch last_layer with "
            "configs/accelerate/multi_gpu.yaml, or shard one process's model over its GPUs with "
            "LanguageModel.load(..., device_map='auto') (README, 'Running at the paper's scale')"
        )
    if acc.device.type != dev.type:
        raise EngineError(
            f"the model is on {dev} but this process's accelerator device is {acc.device}; "
            f"load the model with device=accelerator.device before building the OptionModel"
        )
    if acc.num_processes != process_share()[1]:
        raise EngineError(
            f"the accelerator sees {acc.num_processes} process(es) but {process_share()[1]} were launched; "
            "create the Accelerator with cpu=True on a machine without CUDA"
        )
    set_seed(seed)
    params = option_model.parameters_to_train()
    if not params:
        raise EngineError("the option model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    world, rank = acc.num_processes, acc.process_index
    result = TrainResult(n_processes=world)
    best, best_state, bad_epochs = float("inf"), None, 0
    start = time.perf_counter()

    def evaluate(epoch: int) -> bool:
        """Score after ``epoch``; True when training should stop."""
        nonlocal best, best_state, bad_epochs
        score = agreed(float(eval_fn(option_model)))
        result.eval_history.append(score)
        if result.best_epoch is None or score < best - min_improvement:
            best, best_state, bad_epochs, result.best_epoch = score, option_model.state_dict(), 0, epoch
            return False
        bad_epochs += 1
        return patience is not None and bad_epochs >= patience

    if eval_initial:
        evaluate(0)
    for epoch in range(epochs):
        epoch_batches = batches(epoch) if callable(batches) else batches
        show = progress is not False and acc.is_local_main_process
        bar = tqdm(epoch_batches, desc=f"{desc} epoch {epoch + 1}/{epochs}",
                   disable=(None if progress is None else False) if show else True, leave=False)
        losses = []
        for items in bar:
            loss = _step(option_model, loss_fn, list(items), rank, world, params, optimizer, acc, max_grad_norm)
            if not torch.isfinite(torch.tensor(loss)):
                raise NonFiniteLogitsError(
                    f"the loss became {loss} at epoch {epoch + 1}, step {len(losses) + 1}; lower the learning rate"
                )
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}")
        result.step_loss += losses
        result.epoch_loss.append(sum(losses) / max(len(losses), 1))
        result.epochs_run = epoch + 1
        if eval_fn is not None and evaluate(epoch + 1):
            result.stopped_early = True
            break
    if best_state is not None and restore_best:
        option_model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    result.seconds_per_step = result.seconds / max(len(result.step_loss), 1)
    return result


def _step(option_model, loss_fn, batch, rank, world, params, optimizer, acc, max_grad_norm) -> float:
    """One optimiser step on this process's items of ``batch``; returns the loss over all processes.

    Data parallel: the processes' gradients are summed here.  FSDP (a sharded
    ``lora``/``full`` model): FSDP's reduce-scatter averages the gradients, so
    each process's loss is scaled by the number of processes to make the sum;
    a process without items runs the loss of the batch's first item times 0,
    so that it joins every collective forward and backward pass.
    """
    optimizer.zero_grad(set_to_none=True)
    items = batch[rank::world]
    fsdp = getattr(option_model, "fsdp", False)
    if items or fsdp:
        loss = loss_fn(option_model, items or batch[:1])
        if not torch.is_tensor(loss) or loss.dim() != 0:
            raise EngineError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not items:
            loss = loss * 0.0
        (loss * world if fsdp else loss).backward()
        value = loss.detach().float().reshape(1)
    else:  # more processes than items: contribute nothing, but take part in the sum
        value = torch.zeros(1, device=params[0].device)
    if fsdp:
        for p in params:  # as below: a parameter the loss did not reach still takes its (zero-gradient) step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if world > 1:
            value = acc.reduce(value.to(acc.device), reduction="sum")
    elif world > 1:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [value.to(grads[0].device)])
        flat = acc.reduce(flat, reduction="sum")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
            offset += g.numel()
        value = flat[-1:]
    else:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return float(value)
