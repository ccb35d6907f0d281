"""Training engine: a language model's option distribution, made trainable.

:class:`OptionModel` wraps a causal LM, its tokenizer and an
:class:`~dsalib.lm.OptionRule`, and returns the option distribution of
prepared prompts, differentiable in the parameters a *strategy* trains:

- ``"last_layer"`` (paper default): the last transformer block, the final norm
  and the output layer's option rows.  Everything below the last block is
  frozen, so its output never changes: :meth:`OptionModel.prepare` runs the
  frozen prefix once per prompt and caches the last block's inputs (hidden
  states and rotary cos/sin, captured with a forward pre-hook).  Each training
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

The engine trains ``model`` in place (pass ``copy.deepcopy(model)`` to keep the
original).  :meth:`OptionModel.export_model` returns a plain model whose
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

import functools
import hashlib
import inspect
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dsalib.distributed import agreed, gather_shards, process_share
from dsalib.errors import DsaError
from dsalib.lm import (
    NonFiniteLogitsError,
    OptionRule,
    check_finite,
    encode_prompts,
    label_log_probs,
    model_device,
    pad_left,
    pad_token_id,
    position_ids_from_mask,
)

STRATEGIES = ("last_layer", "lora", "full")


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


def _rope_kwarg(block: nn.Module, kwargs: dict) -> str:
    """Name of the block's keyword argument that carries its rotary (cos, sin)."""
    if "position_embeddings" in kwargs:
        return "position_embeddings"
    if "position_embeddings_global" in kwargs:  # Gemma 3: local rope on sliding layers
        return "position_embeddings_local" if getattr(block.self_attn, "is_sliding", False) else "position_embeddings_global"
    raise EngineError(
        f"could not find the rotary position embeddings among the inputs of {type(block).__name__} "
        f"({sorted(kwargs)}); use OptionModel(..., cache=False) or strategy='lora'/'full'"
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


# --------------------------------------------------------------------------- the option model


@dataclass
class _Entry:
    """Cached inputs of the last block for one prompt (real tokens only)."""

    h: torch.Tensor  # (L, H)
    cos: torch.Tensor  # (L, D)
    sin: torch.Tensor  # (L, D)


class OptionModel(nn.Module):
    """A causal LM's option distribution for prepared prompts, trainable by a strategy.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM (trained in place) and its tokenizer.
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
        Prompts per forward pass in :meth:`prepare` and :meth:`predict`.
    cache_dir
        Optional folder for an on-disk cache of last-block inputs, keyed by a
        fingerprint of the frozen weights and the prompt's token ids.
    seed
        Seeds the LoRA initialisation.
    verify_tol
        Largest allowed difference in option probabilities between the cached
        path and the model's own forward pass at :meth:`prepare` (default 1e-4
        in fp32, 2e-2 in half precision).
    """

    def __init__(self, model, tokenizer, rule: OptionRule, strategy: str = "last_layer", *,
                 cache: bool = True, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
                 lora_target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 batch_size: int = 16, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 verify_tol: float | None = None):
        super().__init__()
        if strategy not in STRATEGIES:
            raise EngineError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.rule = rule
        self.options = self.rule.resolve(tokenizer)
        self.tokenizer = tokenizer
        self.strategy = strategy
        self.cached = bool(cache) and strategy == "last_layer"
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = seed
        self.lora_config = None
        model.eval()  # no dropout anywhere: the paper's setting has none to speak of
        for p in model.parameters():
            p.requires_grad_(False)
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
            for p in list(block.parameters()) + list(decoder.norm.parameters()):
                p.requires_grad_(True)
            self.head = _option_head(model, self.options.single_ids)
        elif strategy == "lora":
            from peft import LoraConfig, get_peft_model

            self.lora_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                          target_modules=list(lora_target_modules), bias="none")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = get_peft_model(model, self.lora_config)
            model.eval()
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        dtype = next(model.parameters()).dtype
        self.verify_tol = verify_tol if verify_tol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
        self._ids: list[list[int]] = []
        self._entries: list[_Entry] = []
        self._memory: dict[tuple[int, ...], _Entry] = {}
        self._fingerprint: str | None = None
        self.prefix_seconds = 0.0  # time spent running the frozen prefix in prepare()
        self.prefix_computed = 0  # prompts whose prefix was run (not found in a cache)

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
        return model_device(self.model)

    @property
    def n_prompts(self) -> int:
        return len(self._ids)

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

    def prepare(self, prompts: Sequence[str], progress: bool = False) -> "OptionModel":
        """Tokenise ``prompts`` (checked against the rule and the context) and,
        for the cached ``last_layer`` engine, cache their last-block inputs.

        Indices passed to :meth:`forward` refer to this list.  Prompts seen
        before (in memory, or in ``cache_dir``) are not recomputed.
        """
        self._ids = encode_prompts(self.tokenizer, prompts, self.rule, model=self.base_model)
        if not self.cached:
            return self
        todo = [i for i in range(len(self._ids)) if tuple(self._ids[i]) not in self._memory]
        if self.cache_dir is not None and todo:
            todo = [i for i in todo if not self._load_from_disk(self._ids[i])]
        self._compute_prefix(todo, progress)
        self._entries = [self._memory[tuple(s)] for s in self._ids]
        return self

    @torch.no_grad()
    def _compute_prefix(self, rows: list[int], progress: bool) -> None:
        from .progress import bar as tqdm

        if not rows:
            return
        start = time.perf_counter()
        order = sorted(rows, key=lambda i: len(self._ids[i]))
        block = self.decoder.layers[-1]
        pad = pad_token_id(self.tokenizer)
        chunks = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        for chunk in tqdm(chunks, desc="prefix cache", disable=not progress):
            seqs = [self._ids[i] for i in chunk]
            input_ids, mask = pad_left(seqs, pad, self.device)
            captured: dict[str, Any] = {}

            def hook(module, args, kwargs):
                captured["h"] = args[0] if args else kwargs["hidden_states"]
                captured["kwargs"] = kwargs

            handle = block.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                out = self.decoder(input_ids=input_ids, attention_mask=mask,
                                   position_ids=position_ids_from_mask(mask), use_cache=False)
            finally:
                handle.remove()
            reference = self._head_log_probs(out.last_hidden_state[:, -1], chunk)
            cos, sin = captured["kwargs"][_rope_kwarg(block, captured["kwargs"])]
            entries = []
            for r, seq in enumerate(seqs):
                n = len(seq)
                rr = r if cos.shape[0] > 1 else 0
                entries.append(_Entry(h=captured["h"][r, -n:].clone(), cos=cos[rr, -n:].clone(), sin=sin[rr, -n:].clone()))
            cached = self._cached_log_probs(entries, chunk)
            diff = float((cached.exp() - reference.exp()).abs().max())
            if diff > self.verify_tol:
                raise EngineError(
                    f"the cached last-layer path disagrees with the model's forward pass by {diff:.2e} in "
                    f"option probability (tolerance {self.verify_tol:.0e}) for {type(block).__name__}; "
                    f"use OptionModel(..., cache=False) or strategy='lora'/'full', and report this model"
                )
            for seq, entry in zip(seqs, entries):
                self._memory[tuple(seq)] = entry
                if self.cache_dir is not None:
                    self._save_to_disk(seq, entry)
        self.prefix_seconds += time.perf_counter() - start
        self.prefix_computed += len(rows)

    # ------------------------------------------------------------------ on-disk cache

    def fingerprint(self) -> str:
        """Hash of the config and every frozen weight below the last block."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.base_model.config.to_json_string().encode())
            frozen = [self.decoder.embed_tokens] + list(self.decoder.layers[:-1])
            for module in frozen:
                for name, t in list(module.named_parameters()) + list(module.named_buffers()):
                    digest.update(name.encode())
                    digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _disk_path(self, seq: Sequence[int]) -> Path:
        key = hashlib.sha256((self.fingerprint() + ":" + ",".join(map(str, seq))).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def _load_from_disk(self, seq: Sequence[int]) -> bool:
        from safetensors.torch import load_file

        path = self._disk_path(seq)
        if not path.is_file():
            return False
        t = load_file(str(path), device=str(self.device))
        self._memory[tuple(seq)] = _Entry(h=t["h"], cos=t["cos"], sin=t["sin"])
        return True

    def _save_to_disk(self, seq: Sequence[int], entry: _Entry) -> None:
        from safetensors.torch import save_file

        path = self._disk_path(seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"h": entry.h.contiguous(), "cos": entry.cos.contiguous(), "sin": entry.sin.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: readers never see a half-written file

    # ------------------------------------------------------------------ forward

    def _head_log_probs(self, hidden: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        logits = self.head(hidden)
        cap = getattr(self.base_model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        logits = logits.float()
        check_finite(logits, "option logits", rows=list(rows))
        return torch.log_softmax(logits, dim=-1)

    def _cached_log_probs(self, entries: Sequence[_Entry], rows: Sequence[int]) -> torch.Tensor:
        first = entries[0].h
        length = max(e.h.shape[0] for e in entries)
        bsz = len(entries)
        h = first.new_zeros((bsz, length, first.shape[-1]))
        cos = entries[0].cos.new_zeros((bsz, length, entries[0].cos.shape[-1]))
        sin = torch.zeros_like(cos)
        valid = torch.zeros((bsz, length), dtype=torch.bool, device=first.device)
        for r, e in enumerate(entries):
            n = e.h.shape[0]
            h[r, -n:], cos[r, -n:], sin[r, -n:], valid[r, -n:] = e.h, e.cos, e.sin, True
        out = block_at_last_position(self.decoder.layers[-1], h, valid, cos, sin)
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
            return self._cached_log_probs([self._entries[i] for i in rows], rows)
        input_ids, mask = pad_left([self._ids[i] for i in rows], pad_token_id(self.tokenizer), self.device)
        if self.strategy == "last_layer":  # the plain path: full forward, same trainable parameters
            out = self.decoder(input_ids=input_ids, attention_mask=mask,
                               position_ids=position_ids_from_mask(mask), use_cache=False)
            return self._head_log_probs(out.last_hidden_state[:, -1], rows)
        logp = label_log_probs(self.model, input_ids, mask, self.options, rows=rows)
        return torch.log_softmax(logp, dim=-1)

    def log_probs(self, idx, grad: bool = True) -> torch.Tensor:
        """:meth:`forward`, with or without autograd."""
        with torch.set_grad_enabled(grad):
            return self(idx)

    def probs(self, idx, grad: bool = True) -> torch.Tensor:
        """Option probabilities (B, K) of prepared prompts ``idx``."""
        return self.log_probs(idx, grad).exp()

    @torch.no_grad()
    def predict(self, idx=None, batch_size: int | None = None) -> torch.Tensor:
        """Option probabilities of prepared prompts (all by default), batched, no autograd."""
        rows = self._index(range(self.n_prompts) if idx is None else idx)
        size = batch_size or self.batch_size
        parts = [self(rows[s : s + size]).exp() for s in range(0, len(rows), size)]
        return torch.cat(parts) if parts else torch.zeros((0, self.rule.n_options))

    # ------------------------------------------------------------------ export

    @torch.no_grad()
    def export_model(self):
        """The trained model as a plain transformers model.

        ``last_layer``: unties the LM head (a copy of the embedding) and writes
        the trained option rows into it, so :func:`~dsalib.lm.option_probs` of the
        returned model equals :meth:`predict` (other rows keep their values).
        ``lora`` returns the peft model, ``full`` the model itself.
        """
        if self.strategy != "last_layer":
            return self.model
        model = self.model
        lm_head = model.get_output_embeddings()
        if lm_head.weight is model.get_input_embeddings().weight:
            lm_head.weight = nn.Parameter(lm_head.weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        ids = torch.tensor(self.options.single_ids, device=lm_head.weight.device)
        lm_head.weight[ids] = self.head.weight.to(lm_head.weight.dtype)
        if self.head.bias is not None:
            lm_head.bias[ids] = self.head.bias.to(lm_head.bias.dtype)
        return model


def _option_head(model, ids: Sequence[int]) -> nn.Linear:
    """An untied copy of the LM head's rows for the option tokens."""
    lm_head = model.get_output_embeddings()
    weight = lm_head.weight
    head = nn.Linear(weight.shape[1], len(ids), bias=lm_head.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight[list(ids)])
        if lm_head.bias is not None:
            head.bias.copy_(lm_head.bias[list(ids)])
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
    local = (option_model.predict(share) if share
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
            items = list(items)
            loss = _step(option_model, loss_fn, items[rank::world], params, optimizer, acc, max_grad_norm)
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


def _step(option_model, loss_fn, items, params, optimizer, acc, max_grad_norm) -> float:
    """One optimiser step on this process's items; returns the loss over all processes."""
    optimizer.zero_grad(set_to_none=True)
    if items:
        loss = loss_fn(option_model, items)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            raise EngineError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        loss.backward()
        value = loss.detach().float().reshape(1)
    else:  # more processes than items: contribute nothing, but take part in the sum
        value = torch.zeros(1, device=params[0].device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if acc.num_processes > 1:
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [value.to(grads[0].device)])
        flat = acc.reduce(flat, reduction="sum")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype)
            offset += g.numel()
        value = flat[-1:]
    else:
        for p, g in zip(params, grads):
            p.grad = g
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return float(value)
