"""Textual-inversion embeddings: N new vectors that stand for one prompt word.

The tokenizer and the text encoder belong to the host (the WebUI's own), so neither is changed:
no tokens are added and the token table is not resized. Instead, while attached:

- `bundle.tokenizer` is wrapped so that wherever the word's token ids occur, they become N
  placeholder ids just past the end of the token table (the WebUI does the same substitution at
  generation time: the word's ids are replaced by the embedding's N vectors, and a block that would
  straddle a 75-token chunk starts the next chunk).
- Two hooks on the token-embedding layer map placeholder ids to a valid id before the lookup and
  put the trainable vectors into those rows after it. The rest of the text path (chunks, clip skip,
  previews) runs unchanged, and gradients reach only the vectors.

detach() removes both hooks and puts the original tokenizer back; the text encoder's modules are
then exactly as before. The result is saved as the WebUI/sd-scripts single-tensor .safetensors
({"emb_params": [N, width]}; the WebUI names the embedding after the file), or, with
embedding.save_pt, as the WebUI's legacy .pt dict.
"""
from __future__ import annotations

import random
import time
import zlib
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import ConfigError, ConfigProblem, TrainConfig
from ..data.templates import TemplateError, fill, load_template
from ..export.atomic import save_safetensors, save_torch_legacy
from ..export.metadata import embedding_metadata
from ..model.bundle import ModelBundle
from ..train.text import CHUNK
from .base import Method, SaveInfo

TENSOR_KEY = "emb_params"          # the key sd-scripts writes; the WebUI and diffusers accept any single key
WEBUI_TOKEN_ID = 265               # the constant the WebUI writes in string_to_token
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without start/end tokens, as train/text.py tokenizes captions."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def contains(ids: list[int], word: list[int]) -> bool:
    n = len(word)
    return n > 0 and any(ids[i:i + n] == word for i in range(len(ids) - n + 1))


def substitute(ids: list[int], word: list[int], placeholders: list[int], *, chunk_fill: Optional[list[int]] = None
               ) -> list[int]:
    """Replace every occurrence of `word` (a run of ids) by `placeholders`. With chunk_fill (the ids
    that pad a chunk: end token, then padding), a block that would cross a 75-token chunk boundary
    is moved to the next chunk, as the WebUI does."""
    out: list[int] = []
    i, n, size = 0, len(word), len(placeholders)
    while i < len(ids):
        if n and ids[i:i + n] == word:
            pos = len(out) % CHUNK
            if chunk_fill and size <= CHUNK and pos + size > CHUNK:
                gap = CHUNK - pos
                out += [chunk_fill[0]] + [chunk_fill[1]] * (gap - 1)
            out += placeholders
            i += n
        else:
            out.append(ids[i])
            i += 1
    return out


class PlaceholderTokenizer:
    """The host's tokenizer, except that the embedding's word comes out as placeholder ids.

    Everything but calling is delegated to the wrapped tokenizer. Supports the call shapes the text
    path uses (a str or a list of str, ids as lists); refuses tensors/padding, whose lengths the
    substitution would change."""

    def __init__(self, base, word: list[int], placeholders: list[int], active: Callable[[], bool]):
        self.base = base
        self.word = list(word)
        self.placeholders = list(placeholders)
        self.active = active
        eos = base.eos_token_id
        pad = base.pad_token_id if base.pad_token_id is not None else eos
        self.chunk_fill = [eos, pad]

    def __getattr__(self, name: str):
        if name == "base":      # not yet set (copy/pickle): never recurse
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __call__(self, text, *args, **kwargs):
        if args or kwargs.get("return_tensors") or kwargs.get("padding"):
            raise TypeError("while an embedding trains, tokenize prompts with extensions_lib.train.text.tokenize "
                            "(ids as lists, no padding or tensors)")
        enc = self.base(text, **kwargs)
        if not self.active():
            return enc
        # chunk alignment only applies to the chunked path (no start/end tokens in the ids)
        fill_ids = self.chunk_fill if kwargs.get("add_special_tokens", True) is False else None
        ids = enc["input_ids"]
        if isinstance(text, str):
            enc["input_ids"] = substitute(list(ids), self.word, self.placeholders, chunk_fill=fill_ids)
        else:
            enc["input_ids"] = [substitute(list(x), self.word, self.placeholders, chunk_fill=fill_ids) for x in ids]
        if "attention_mask" in enc:
            new = enc["input_ids"]
            enc["attention_mask"] = [1] * len(new) if isinstance(text, str) else [[1] * len(x) for x in new]
        return enc


def initial_vectors(tokenizer, table: torch.nn.Embedding, init_text: str, num_vectors: int) -> torch.Tensor:
    """The WebUI's initialisation: the init text's first num_vectors token embeddings spread over the
    vectors (vector i takes token i * tokens // num_vectors); zeros without an init text."""
    vec = torch.zeros(num_vectors, table.embedding_dim, dtype=torch.float32)
    ids = token_ids(tokenizer, init_text)[:num_vectors] if init_text and init_text.strip() else []
    ids = [i for i in ids if i < table.num_embeddings]
    if ids:
        with torch.no_grad():
            rows = table.weight[torch.tensor(ids, device=table.weight.device)].float().cpu()
        for i in range(num_vectors):
            vec[i] = rows[i * len(ids) // num_vectors]
    return vec


class EmbeddingMethod(Method):
    kind = "embedding"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        e = cfg.embedding
        self.token = e.token
        self.num_vectors = int(e.num_vectors)
        self.file_suffix = ".pt" if getattr(e, "save_pt", False) else ".safetensors"
        self.templates: Optional[list[str]] = None
        if e.prompt_source == "template":
            try:
                self.templates = load_template(e.template)
            except TemplateError as err:
                raise ConfigError([ConfigProblem("embedding.template", e.template, str(err))]) from None
        self.vectors: Optional[torch.nn.Parameter] = None
        self._rng = random.Random(cfg.training.seed)
        self._enabled = True
        self._training = False
        self._word: list[int] = []
        self._first_placeholder = 0
        self._handles: list = []
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._tokenizer = None      # the host's tokenizer while ours stands in for it

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, bundle: ModelBundle) -> None:
        table = bundle.text_encoder.get_input_embeddings()
        tokenizer = bundle.tokenizer
        word = token_ids(tokenizer, self.token)
        if not word:
            raise ConfigError([ConfigProblem("embedding.token", self.token,
                                             "the tokenizer turns it into no tokens: use letters or digits")])
        self.bundle = bundle
        self._word = word
        self._first_placeholder = table.num_embeddings
        init = initial_vectors(tokenizer, table, self.cfg.embedding.init_text, self.num_vectors)
        self.vectors = torch.nn.Parameter(init.to(table.weight.device))
        self._handles = [table.register_forward_pre_hook(self._before_lookup),
                         table.register_forward_hook(self._after_lookup)]
        placeholders = list(range(self._first_placeholder, self._first_placeholder + self.num_vectors))
        self._tokenizer = tokenizer
        bundle.tokenizer = PlaceholderTokenizer(tokenizer, word, placeholders, lambda: self._enabled)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending = None
        if self.bundle is not None and self._tokenizer is not None:
            self.bundle.tokenizer = self._tokenizer
        self._tokenizer = None
        self.bundle = None

    def file_path(self, folder: Path, name: str, *, epoch: int | None = None, step: int | None = None,
                  best: bool = False) -> Path:
        """Step saves are `<name>-<step>` as the WebUI's own trainer names them (the file name is
        the prompt word the WebUI lists)."""
        if step is not None:
            return super().file_path(folder, f"{name}-{step}")
        return super().file_path(folder, name, epoch=epoch, best=best)

    def param_groups(self) -> list[dict]:
        # no weight decay: it would pull the new word toward the zero vector (the WebUI uses 0 too)
        return [{"params": [self.vectors], "lr": self.cfg.training.learning_rate, "weight_decay": 0.0,
                 "name": "embedding"}]

    @property
    def trains_text_encoder(self) -> bool:
        # gradients flow through the (frozen) text encoder to the vectors: no conditioning cache
        return True

    def train_mode(self, training: bool) -> None:
        self._training = training

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled

    # -- the two hooks on the token table ----------------------------------------------------
    def _before_lookup(self, module, args):
        ids = args[0]
        mask = ids >= self._first_placeholder
        if not bool(mask.any()):
            self._pending = None
            return None
        index = (ids - self._first_placeholder).clamp(0, self.num_vectors - 1)
        self._pending = (mask, index)
        return (ids.masked_fill(mask, 0),) + tuple(args[1:])

    def _after_lookup(self, module, args, output):
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        mask, index = pending
        rows = self.vectors.to(device=output.device, dtype=output.dtype)[index]
        return torch.where(mask.unsqueeze(-1), rows, output)

    # -- prompts -----------------------------------------------------------------------------
    def _has_word(self, text: str) -> bool:
        tokenizer = self._tokenizer or (self.bundle.tokenizer if self.bundle else None)
        if tokenizer is None or not self._word:
            return self.token.lower() in text.lower()
        return contains(token_ids(tokenizer, text), self._word)

    def caption(self, caption: str) -> str:
        """The training prompt: a template line with [name]/[filewords] filled in, or the caption
        with [name] replaced; the word is put in front when the result lacks it."""
        if self.templates:
            if self._training:
                line = self._rng.choice(self.templates)
            else:   # evaluations compare like with like: the same line for the same caption
                line = self.templates[zlib.crc32(caption.encode("utf-8")) % len(self.templates)]
            text = fill(line, self.token, caption)
        else:
            text = caption.replace("[name]", self.token)
        if not self._has_word(text):
            text = f"{self.token}, {text}" if text.strip() else self.token
        return text

    # -- output ------------------------------------------------------------------------------
    def webui_dict(self, name: str, step: int, vec: torch.Tensor) -> dict:
        """The WebUI's .pt layout (modules/textual_inversion: Embedding.save)."""
        sd_checkpoint, sd_checkpoint_name = self._checkpoint_ids()
        return {
            "string_to_token": {"*": WEBUI_TOKEN_ID},
            "string_to_param": {"*": vec},
            "name": name,
            "step": int(step),
            "sd_checkpoint": sd_checkpoint,
            "sd_checkpoint_name": sd_checkpoint_name,
        }

    def _checkpoint_ids(self) -> tuple[Optional[str], Optional[str]]:
        """(short hash, name) of the base checkpoint, as the WebUI records them (sha256[:10], file name)."""
        b = self.bundle
        if b is None:
            return None, None
        sha = getattr(b, "model_sha256", None)
        return (sha[:10] if sha else getattr(b, "model_hash", None)), (getattr(b, "model_name", None) or None)

    def save(self, path: Path, info: SaveInfo, *, overwrite: bool) -> Path:
        path = Path(path)
        dtype = SAVE_DTYPES[self.cfg.output.save_precision]
        vec = self.vectors.detach().to("cpu", dtype=dtype).contiguous()
        name = path.stem
        if path.suffix.lower() == ".pt":
            save_torch_legacy(self.webui_dict(name, info.step, vec), path, overwrite=overwrite)
            return path
        b, d = self.bundle, self.cfg.data
        sd_checkpoint, sd_checkpoint_name = self._checkpoint_ids()
        meta = embedding_metadata(
            name=name, step=info.step, sd_checkpoint=sd_checkpoint, sd_checkpoint_name=sd_checkpoint_name,
            num_vectors_per_token=self.num_vectors, init_text=self.cfg.embedding.init_text,
            architecture=b.modelspec_architecture, resolution=(d.resolution, d.resolution),
            saved_at=info.finished_at or time.time(), v_prediction=b.v_prediction,
            clip_skip=info.extra.get("clip_skip"),
        )
        save_safetensors({TENSOR_KEY: vec}, path, meta, overwrite=overwrite)
        return path

    def prompt_usage(self, name: str) -> str:
        # the WebUI knows an embedding by its file name, which is the token unless output.name says otherwise
        return name
