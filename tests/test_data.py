"""Shard format, built-in corpus and batch iterator."""

import os

import chex
import numpy as np
import pytest

from experiments.problems import data


def _write_raw(path, header_ints, tokens, extra=b""):
  header = np.zeros(256, dtype="<i4")
  header[:len(header_ints)] = header_ints
  with open(path, "wb") as f:
    f.write(header.tobytes() + np.asarray(tokens, "<u2").tobytes() + extra)


def test_shard_round_trip(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 50257, size=1000)
  path = str(tmp_path / "a.bin")
  data.write_shard(path, tokens)
  assert os.path.getsize(path) == 1024 + 2 * 1000
  got = data.read_shard(path, vocab_size=50257)
  chex.assert_trees_all_equal(np.asarray(got, np.int64), tokens)


@pytest.mark.parametrize("header, ntok, extra, message", [
    ((123, 1, 10), 10, b"", "bad magic"),
    ((data.MAGIC, 2, 10), 10, b"", "unsupported shard version 2"),
    ((data.MAGIC, 1, 10), 9, b"", "truncated"),
    ((data.MAGIC, 1, 10), 10, b"xx", "trailing bytes"),
])
def test_bad_shards_name_the_file(tmp_path, header, ntok, extra, message):
  path = str(tmp_path / "bad.bin")
  _write_raw(path, header, np.arange(ntok), extra)
  with pytest.raises(data.ShardError, match=message) as e:
    data.read_shard(path, vocab_size=256)
  assert path in str(e.value)


def test_short_header_and_token_range_errors(tmp_path):
  short = tmp_path / "short.bin"
  short.write_bytes(b"\x00" * 100)
  with pytest.raises(data.ShardError, match="truncated") as e:
    data.read_shard(str(short))
  assert str(short) in str(e.value)
  big = str(tmp_path / "big.bin")
  data.write_shard(big, np.array([1, 2, 300]))
  with pytest.raises(data.ShardError, match="token id 300 is out of range") as e:
    data.read_shard(big, vocab_size=256)
  assert big in str(e.value)


def test_empty_glob_is_an_error(tmp_path):
  pattern = str(tmp_path / "nothing_*.bin")
  with pytest.raises(data.ShardError, match="no shard matches") as e:
    data.resolve_glob(pattern)
  assert pattern in str(e.value)


def _fake_stdlib(root):
  files = {"a.py": b"A" * 50, "b/c.py": b"C" * 60, "test/x.py": b"no",
           "site-packages/y.py": b"no", "b/test_z.py": b"no", "b/tests/w.py": b"no",
           "readme.txt": b"no"}
  files.update({f"m/f{i:02d}.py": bytes([65 + i % 26]) * (10 + i) for i in range(40)})
  for rel, content in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(content)
  return files


def test_stdlib_corpus_split_order_and_cache(tmp_path):
  root = str(tmp_path / "lib")
  files = _fake_stdlib(root)
  kept = sorted(k for k in files if k.endswith(".py") and "test" not in k and "site-" not in k)
  corpus = data.build_stdlib_corpus(str(tmp_path / "out"), root=root)
  val = [k for i, k in enumerate(kept) if i % 20 == 19]
  train = [k for i, k in enumerate(kept) if i % 20 != 19]
  want_train = b"".join(files[k] for k in train)
  want_val = b"".join(files[k] for k in val)
  got_train = np.concatenate([data.read_shard(p, 256) for p in corpus.train_files])
  got_val = np.concatenate([data.read_shard(p, 256) for p in corpus.val_files])
  assert bytes(got_train.astype(np.uint8)) == want_train
  assert bytes(got_val.astype(np.uint8)) == want_val
  # Built once: a second call reuses the files and reports the same hash.
  again = data.build_stdlib_corpus(str(tmp_path / "out"), root=root)
  assert again.sha256 == corpus.sha256


def test_docs_corpus_holds_the_prose_with_each_files_last_tenth_for_validation(tmp_path):
  root = str(tmp_path / "lib")
  os.makedirs(os.path.join(root, "pkg", "tests"))
  texts = {"LICENSE.txt": b"a" * 95 + b"B" * 10, "pkg/notes.rst": b"c" * 18 + b"D" * 2,
           "pkg/tests/skip.txt": b"never", "pkg/mod.py": b"import os\n"}
  for rel, content in texts.items():
    with open(os.path.join(root, rel), "wb") as f:
      f.write(content)
  out = str(tmp_path / "out")
  docs = data.build_stdlib_corpus(out, root=root, kind="stdlib_docs")
  read = lambda paths: bytes(np.concatenate([data.read_shard(p, 256) for p in paths])
                             .astype(np.uint8))
  assert read(docs.train_files) == b"a" * 95 + b"c" * 18
  assert read(docs.val_files) == b"B" * 10 + b"D" * 2
  # The source corpus can share the cache directory without either reading the other's files.
  py = data.build_stdlib_corpus(out, root=root)
  assert py.sha256 != docs.sha256 and read(py.train_files) == b"import os\n"
  assert data.build_stdlib_corpus(out, root=root, kind="stdlib_docs").sha256 == docs.sha256
  # The real standard library's prose is none of the speedrun's files.
  real = data.stdlib_doc_files()
  assert real and not set(real) & set(data.stdlib_source_files())


def test_real_stdlib_has_no_tests_or_site_packages():
  files = data.stdlib_source_files()
  assert len(files) > 300
  assert files == sorted(files)
  for f in files:
    parts = f.split(os.sep)
    assert "site-packages" not in parts and "test" not in parts and "tests" not in parts


def _source(tmp_path, n=5000, window=17):
  paths = []
  for i, size in enumerate((n, n // 3)):
    p = str(tmp_path / f"s{i}.bin")
    data.write_shard(p, np.random.default_rng(i).integers(0, 256, size=size))
    paths.append(p)
  return data.TokenSource(paths, 256, window)


def test_windows_do_not_straddle_shards(tmp_path):
  src = _source(tmp_path)
  assert src.num_windows == (5000 - 16) + (5000 // 3 - 16)
  rows = src.windows(np.array([0, 5000 - 17, 5000 - 16]))
  chex.assert_trees_all_equal(rows[0], np.asarray(src.shards[0][:17], np.int32))
  chex.assert_trees_all_equal(rows[1], np.asarray(src.shards[0][-17:], np.int32))
  chex.assert_trees_all_equal(rows[2], np.asarray(src.shards[1][:17], np.int32))


def test_batch_iterator_is_deterministic_and_resumes(tmp_path):
  src = _source(tmp_path)
  a = data.BatchIterator(src, 8, seed=3)
  straight = [next(a) for _ in range(10)]
  b = data.BatchIterator(src, 8, seed=3)
  first = [next(b) for _ in range(4)]
  saved = b.state()
  assert saved == {"position": 4, "seed": 3}
  c = data.BatchIterator(src, 8, seed=3)
  c.restore(saved)
  resumed = first + [next(c) for _ in range(6)]
  chex.assert_trees_all_equal(straight, resumed)
  other = data.BatchIterator(src, 8, seed=4)
  assert not np.array_equal(next(other), straight[0])
  assert not np.array_equal(straight[0], straight[1])
  with pytest.raises(ValueError, match="seed"):
    data.BatchIterator(src, 8, seed=5).restore(saved)


def test_processes_split_the_global_batch(tmp_path):
  src = _source(tmp_path)
  full = data.BatchIterator(src, 8, seed=1).batch_at(7)
  parts = [data.BatchIterator(src, 8, seed=1, process_index=i, process_count=4).batch_at(7)
           for i in range(4)]
  chex.assert_trees_all_equal(np.concatenate(parts), full)


def test_eval_batches_are_fixed(tmp_path):
  src = _source(tmp_path)
  a = data.eval_batches(src, 4, 3)
  b = data.eval_batches(src, 4, 3)
  chex.assert_trees_all_equal(a, b)
  assert len(a) == 3 and a[0].shape == (4, 17)


def test_token_ids_are_range_checked_as_batches_are_drawn(tmp_path):
  """No scan of every shard at start (minutes on 10B tokens): a bad id is found when drawn."""
  good = np.arange(1000) % 50
  bad = good.copy()
  bad[500] = 60000
  data.write_shard(str(tmp_path / "a.bin"), good)
  data.write_shard(str(tmp_path / "b.bin"), bad)
  src = data.TokenSource([str(tmp_path / "a.bin"), str(tmp_path / "b.bin")], 50257, 9)
  src.windows(np.arange(0, 900, 7))  # windows of the good shard: fine
  ok = data.TokenSource([str(tmp_path / "b.bin")], 60001, 9)
  ok.windows(np.array([495]))
  with pytest.raises(data.ShardError, match="b.bin: token id 60000 is out of range"):
    src.windows(np.array([992 + 495]))
