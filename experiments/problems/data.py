"""Token data: the shard format, the built-in corpora and the deterministic batch iterator.

Shard format (modded-nanogpt's FineWeb `.bin`): a header of 256 little-endian int32 (magic
20240520, version 1, token count, then zeros) followed by the tokens as little-endian uint16.

The built-in corpus needs no download and is the same bytes on every interpreter: the CPython
3.11.7 standard library's own `.py` sources (no tests, no site-packages) in sorted path order,
every 20th file held out for validation, shipped xz-compressed in `corpora/` (1.9 MB; the
PSF-licensed sources, whose licence text is part of `stdlib_docs`) and checked against its
pinned SHA-256 each time it is unpacked. Vocabulary: the 256 byte values. A second built-in
corpus, `stdlib_docs`, holds that standard library's prose instead (its `.txt` and `.rst` files:
licence, IDLE's news and readme, ...; about 150 KB, none of it in the first): the last tenth of
every file is validation. It is the new text for LoRA fine-tuning. `python -m
scripts.make_corpus` rebuilds both files from a standard library tree (the builder below is the
one that made them) and refuses a tree whose bytes differ from the pins.

Batches are a pure function of (seed, step): the iterator's whole state is its position, which
the checkpoint stores, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import hashlib
import json
import lzma
import os
import sysconfig
from typing import Iterator, Sequence

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKENS_PER_SHARD = 100_000_000


class ShardError(ValueError):
  """A token shard that cannot be read: the message names the file."""


def write_shard(path: str, tokens: np.ndarray) -> None:
  """Writes `tokens` (ints in [0, 65535]) as one shard, atomically (tmp file + rename)."""
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
  if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max):
    raise ValueError("tokens must fit in uint16")
  header = np.zeros(HEADER_INTS, dtype="<i4")
  header[:3] = (MAGIC, VERSION, tokens.size)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(header.tobytes())
    f.write(tokens.astype("<u2").tobytes())
  os.replace(tmp, path)


def read_shard(path: str, vocab_size: int | None = None) -> np.ndarray:
  """Memory-maps a shard's tokens (uint16), checking header, length and token range."""
  if os.path.isdir(path):
    raise ShardError(f"{path}: is a directory, not a token shard")
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise ShardError(f"{path}: cannot open shard ({e})") from e
  if size < HEADER_BYTES:
    raise ShardError(
        f"{path}: truncated: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
  try:
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
  except OSError as e:  # e.g. no read permission
    raise ShardError(f"{path}: cannot read shard ({e.strerror or e})") from e
  if header[0] != MAGIC:
    raise ShardError(f"{path}: bad magic number {header[0]} (expected {MAGIC}); not a token shard")
  if header[1] != VERSION:
    raise ShardError(f"{path}: unsupported shard version {header[1]} (expected {VERSION})")
  num_tokens = int(header[2])
  expected = HEADER_BYTES + 2 * num_tokens
  if size != expected:
    kind = "truncated" if size < expected else "has trailing bytes"
    raise ShardError(f"{path}: {kind}: header promises {num_tokens} tokens ({expected} bytes), "
                     f"file has {size} bytes")
  tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
  if vocab_size is not None and num_tokens:
    top = int(tokens.max())
    if top >= vocab_size:
      raise ShardError(f"{path}: token id {top} is out of range for vocab_size {vocab_size}")
  return tokens


def resolve_glob(pattern: str) -> list[str]:
  paths = sorted(glob_lib.glob(os.path.expanduser(pattern)))
  if not paths:
    raise ShardError(f"no shard matches {pattern!r}")
  return paths


# ---------------------------------------------------------------------------------------------
# The built-in corpus.

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                            "__pycache__"})
VAL_EVERY = 20  # every 20th file (indices 19, 39, ...) is validation


def _stdlib_files(root: str | None, keep) -> list[str]:
  """Paths of the standard library's files whose name `keep` accepts, sorted by path relative
  to `root`, outside tests and installed packages."""
  root = root or sysconfig.get_paths()["stdlib"]
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if keep(f))
  return [os.path.join(root, p) for p in sorted(out)]


def stdlib_source_files(root: str | None = None) -> list[str]:
  """Paths of the standard library's own `.py` files, sorted by path relative to `root`."""
  return _stdlib_files(root, lambda f: f.endswith(".py") and not f.startswith("test_"))


def stdlib_doc_files(root: str | None = None) -> list[str]:
  """Paths of the standard library's `.txt` and `.rst` files (same exclusions), sorted."""
  return _stdlib_files(root, lambda f: f.endswith((".txt", ".rst")))


@dataclasses.dataclass(frozen=True)
class Corpus:
  train_files: tuple[str, ...]
  val_files: tuple[str, ...]
  sha256: str  # of the train and val token streams, as written
  num_train_tokens: int
  num_val_tokens: int


def default_cache_root() -> str:
  """Where the built-in corpus is cached once per machine: $SOJ_CACHE_DIR, else
  $XDG_CACHE_HOME/second_order_jax, else ~/.cache/second_order_jax."""
  if os.environ.get("SOJ_CACHE_DIR"):
    return os.environ["SOJ_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "second_order_jax")


def _split_sources(files: Sequence[str]) -> tuple[list[bytes], list[bytes]]:
  train, val = [], []
  for i, path in enumerate(files):
    with open(path, "rb") as f:
      (val if i % VAL_EVERY == VAL_EVERY - 1 else train).append(f.read())
  return train, val


def _split_tails(files: Sequence[str], fraction: float = 0.1
                 ) -> tuple[list[bytes], list[bytes]]:
  """Each file's last `fraction` is validation (too few files to hold whole ones out)."""
  train, val = [], []
  for path in files:
    with open(path, "rb") as f:
      text = f.read()
    cut = len(text) - int(len(text) * fraction)
    train.append(text[:cut])
    val.append(text[cut:])
  return train, val


# Built-in corpora: name -> (file lister, train/val split).
KINDS = {"stdlib": (stdlib_source_files, _split_sources),
         "stdlib_docs": (stdlib_doc_files, _split_tails)}


def _files(kind: str, root: str | None) -> list[str]:
  if kind not in KINDS:
    raise ValueError(f"unknown built-in corpus {kind!r}; choose from {sorted(KINDS)}")
  files = KINDS[kind][0](root)
  if not files:
    raise FileNotFoundError(f"no files for the {kind!r} corpus under {root!r}")
  return files


def _digest(train: Sequence[bytes], val: Sequence[bytes]) -> str:
  digest = hashlib.sha256()
  for split, chunks in (("train", train), ("val", val)):
    digest.update(split.encode())
    for c in chunks:
      digest.update(c)
  return digest.hexdigest()


# The shipped corpora: name -> SHA-256 of its train and val streams (`_digest`), built by
# `scripts/make_corpus.py` from CPython 3.11.7's standard library (the corpus every record before
# the move to Python 3.12 was made on, so those records stay comparable).
SHIPPED = {
    "stdlib": "80ff680a7f188c0f8aa5237d11a01881de8fa8312c82b83096bc79925b8c67ff",
    "stdlib_docs": "e898ae69ebe4f153495f553d875618adb85bfdfa9a22ca6783ed296bb039bf60",
}
SHIPPED_FROM = "CPython 3.11.7"
CORPORA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")


class CorpusError(ValueError):
  """A shipped corpus file that is missing or whose bytes differ from its pinned hash."""


def shipped_corpus_path(kind: str, split: str) -> str:
  """The compressed stream `split` ("train" or "val") of the shipped corpus `kind`."""
  return os.path.join(CORPORA_DIR, f"{kind}.{split}.xz")


def write_shipped_corpus(kind: str, train: Sequence[bytes], val: Sequence[bytes],
                         out_dir: str = CORPORA_DIR) -> str:
  """Compresses the streams of corpus `kind` into `out_dir` (xz, level 9e); returns the hash."""
  os.makedirs(out_dir, exist_ok=True)
  for split, chunks in (("train", train), ("val", val)):
    path = os.path.join(out_dir, f"{kind}.{split}.xz")
    with open(path + ".tmp", "wb") as f:
      f.write(lzma.compress(b"".join(chunks), preset=9 | lzma.PRESET_EXTREME))
    os.replace(path + ".tmp", path)
  return _digest(train, val)


def read_shipped_corpus(kind: str) -> tuple[bytes, bytes]:
  """The (train, val) bytes of the shipped corpus `kind`, verified against `SHIPPED[kind]`."""
  if kind not in SHIPPED:
    raise ValueError(f"unknown built-in corpus {kind!r}; choose from {sorted(SHIPPED)}")
  streams = []
  for split in ("train", "val"):
    path = shipped_corpus_path(kind, split)
    try:
      with open(path, "rb") as f:
        streams.append(lzma.decompress(f.read()))
    except (OSError, lzma.LZMAError) as e:
      raise CorpusError(f"cannot read the built-in corpus file {path}: {e}; restore it with "
                        f"`git checkout -- {os.path.relpath(path)}`") from e
  digest = _digest([streams[0]], [streams[1]])
  if digest != SHIPPED[kind]:
    raise CorpusError(f"the built-in corpus {kind!r} in {CORPORA_DIR} has SHA-256 "
                      f"{digest[:16]}..., not the pinned {SHIPPED[kind][:16]}...: the files are "
                      "damaged or replaced; restore them with "
                      "`git checkout -- experiments/problems/corpora`")
  return streams[0], streams[1]


def cached_stdlib_corpus(cache_root: str | None = None, root: str | None = None,
                         kind: str = "stdlib") -> Corpus:
  """The built-in corpus `kind` as shards under `<cache_root>/<kind>_<hash>`: written once, shared.

  With `root=None` (the default) it is the shipped corpus, the same bytes on every interpreter;
  a standard library tree `root` builds one from that tree instead. The directory is keyed by
  the content hash, so a damaged cache is never mistaken for it.
  """
  if root is None:
    if kind not in SHIPPED:
      raise ValueError(f"unknown built-in corpus {kind!r}; choose from {sorted(SHIPPED)}")
    digest = SHIPPED[kind]
  else:
    digest = _digest(*KINDS[kind][1](_files(kind, root)))
  out_dir = os.path.join(cache_root or default_cache_root(), f"{kind}_{digest[:16]}")
  return build_stdlib_corpus(out_dir, root, kind)


def build_stdlib_corpus(out_dir: str, root: str | None = None, kind: str = "stdlib") -> Corpus:
  """Writes the built-in corpus `kind` as shards into `out_dir` once; later calls reuse it.

  `root=None` unpacks the shipped corpus (verified against its pinned hash); a standard library
  tree `root` builds the corpus from that tree's files.
  """
  manifest_path = os.path.join(out_dir, f"{kind}_corpus.json")  # kinds may share out_dir
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      m = json.load(f)
    corpus = Corpus(tuple(m["train_files"]), tuple(m["val_files"]), m["sha256"],
                    m["num_train_tokens"], m["num_val_tokens"])
    for path in corpus.train_files + corpus.val_files:
      read_shard(path, 256)  # a damaged cache is an error, not silently different data
    if root is None and corpus.sha256 != SHIPPED.get(kind):
      raise CorpusError(f"{manifest_path} holds corpus {corpus.sha256[:16]}..., not the built-in "
                        f"{kind!r} ({SHIPPED.get(kind, '?')[:16]}...): delete {out_dir}")
    return corpus
  if root is None:
    train_bytes, val_bytes = read_shipped_corpus(kind)
    train, val, num_files = [train_bytes], [val_bytes], None
  else:
    files = _files(kind, root)
    train, val = KINDS[kind][1](files)
    num_files = len(files)
  os.makedirs(out_dir, exist_ok=True)
  digest = _digest(train, val)
  written = {}
  for split, chunks in (("train", train), ("val", val)):
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    paths = []
    for j, start in enumerate(range(0, max(data.size, 1), MAX_TOKENS_PER_SHARD)):
      path = os.path.join(out_dir, f"{kind}_{split}_{j:06d}.bin")
      write_shard(path, data[start:start + MAX_TOKENS_PER_SHARD])
      paths.append(path)
    written[split] = (paths, int(data.size))
  corpus = Corpus(tuple(written["train"][0]), tuple(written["val"][0]), digest,
                  written["train"][1], written["val"][1])
  tmp = manifest_path + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(corpus) | {"num_files": num_files,
                                            "source": root or f"shipped ({SHIPPED_FROM})"},
              f, indent=1)
  os.replace(tmp, manifest_path)
  return corpus


def shards_hash(paths: Sequence[str]) -> str:
  """A content hash of shard files (for run records)."""
  digest = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Batches.

class TokenSource:
  """Shards seen as one stream of windows; windows never straddle a shard boundary."""

  def __init__(self, paths: Sequence[str], vocab_size: int, window: int):
    self.paths = list(paths)
    if not self.paths:
      raise ShardError("no shards given")
    # Token ids are checked as windows are drawn: scanning 10B tokens at start takes minutes.
    self.shards = [read_shard(p) for p in self.paths]
    self.vocab_size = vocab_size
    self.window = window
    usable = [max(len(s) - window + 1, 0) for s in self.shards]
    if sum(usable) == 0:
      raise ShardError(f"shards {self.paths} hold no window of {window} tokens")
    self._starts = np.cumsum([0] + usable)  # global window index -> shard

  @property
  def num_windows(self) -> int:
    return int(self._starts[-1])

  def windows(self, indices: np.ndarray) -> np.ndarray:
    """Rows of `window` tokens starting at global window indices (int32 array)."""
    shard_ids = np.searchsorted(self._starts, indices, side="right") - 1
    out = np.empty((len(indices), self.window), dtype=np.int32)
    for row, (s, i) in enumerate(zip(shard_ids, indices)):
      off = int(i - self._starts[s])
      out[row] = self.shards[s][off:off + self.window]
    if self.vocab_size is not None and out.size and int(out.max()) >= self.vocab_size:
      row = int(np.argmax(out.max(axis=1) >= self.vocab_size))
      raise ShardError(f"{self.paths[shard_ids[row]]}: token id {int(out[row].max())} is out of "
                       f"range for vocab_size {self.vocab_size}")
    return out


class BatchIterator:
  """Training batches: row r of step s starts at a window drawn from rng(seed, s).

  Each batch is a pure function of (seed, step), so the iterator's state is `position` (the next
  step). Multi-host: every process builds the same global index list and keeps its own rows.
  """

  def __init__(self, source: TokenSource, batch_size: int, seed: int, position: int = 0,
               process_index: int = 0, process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    self.source = source
    self.batch_size = batch_size
    self.seed = seed
    self.position = position
    self._rows = slice(process_index * batch_size // process_count,
                       (process_index + 1) * batch_size // process_count)

  def batch_at(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    idx = rng.integers(0, self.source.num_windows, size=self.batch_size)
    return self.source.windows(idx[self._rows])

  def __iter__(self) -> Iterator[np.ndarray]:
    return self

  def __next__(self) -> np.ndarray:
    batch = self.batch_at(self.position)
    self.position += 1
    return batch

  def state(self) -> dict:
    return {"position": self.position, "seed": self.seed}

  def restore(self, state: dict) -> None:
    if int(state["seed"]) != self.seed:
      raise ValueError(f"checkpointed data seed {state['seed']} != configured seed {self.seed}")
    self.position = int(state["position"])


def eval_batches(source: TokenSource, batch_size: int, num_batches: int) -> list[np.ndarray]:
  """A fixed validation set: evenly spaced windows over the validation stream."""
  total = batch_size * num_batches
  idx = np.linspace(0, source.num_windows - 1, num=total).astype(np.int64)
  rows = source.windows(idx)
  return [rows[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]
