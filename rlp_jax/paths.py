"""The one path type of rlp_jax: `etils.epath.Path` (the type orbax takes), local or a URL.

A user path (`--workdir`, `data.data_dir`, `data.files`, `tokenizer.path`, `model.init_from`,
export `--out`, `eval.benchmarks`) is either local (`~` expanded, made absolute) or a URL whose
scheme epath knows (`gs://`, `s3://`, `az://`, `hf://`; epath reaches them through `tf.io.gfile`
when TensorFlow is installed, else through fsspec: gcsfs, s3fs, ...). Every file the package
reads or writes under such a path goes through the helpers here.

Object stores have no append and no atomic rename (a rename is a copy, then a delete), so the
writers above branch on `is_url` only where that matters (metrics.jsonl, TensorBoard event files,
the TFDS corpus files, which array_record reads and writes on a local disk only): the local branch
keeps the POSIX guarantees (fsync, atomic `os.replace`), the URL branch writes whole objects.
A few helpers keep a local branch for speed or compatibility: `glob` (Python's `glob` locally, so
`**` still recurses), `size_and_mtime` (nanosecond mtimes locally, which name existing corpora),
and the safetensors reader (interop/safetensors_io.py: memory-mapped locally, ranged reads at a
URL).

What stays local on purpose: the config files (`--config`, Python that ml_collections imports),
the TFDS/array_record corpus files (built in a local staging directory, data/corpora.py), the
TensorBoard staging files, the device probes under /sys (parallel/distributed.py) and the docs
page config/markdown.py regenerates inside the repository.
"""
from __future__ import annotations

import glob as glob_lib
import io
import os
import posixpath
import tempfile
from typing import IO, Union

from etils import epath

from rlp_jax.errors import DataError, UserInputError

Path = epath.Path
PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """Whether `path` is a URL (`scheme://...`) rather than a local path."""
  return '://' in os.fspath(path)


def known_schemes() -> list[str]:
  """The URL prefixes epath has a path class for (`gs://`, `s3://`, ...)."""
  from etils.epath import register  # pylint: disable=import-outside-toplevel
  return sorted(register._URI_PREFIXES_TO_CLS)  # pylint: disable=protected-access


def resolve(path: PathLike, what: str) -> Path:
  """The epath.Path of a user path: local paths `~`-expanded and absolute, URLs kept as they are.

  `what` names the flag or config key in the one-line error for a URL of an unknown scheme."""
  text = os.fspath(path)
  if is_url(text):
    prefix = text.split('://', 1)[0] + '://'
    if prefix not in known_schemes():
      raise UserInputError(f"{what} {text}: unknown URL scheme {prefix!r}; use a local path or "
                           f"one of {', '.join(known_schemes())}")
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def resolve_str(path: PathLike, what: str) -> str:
  """`resolve` as a string (what messages and results carry)."""
  return os.fspath(resolve(path, what))


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...` as a string; a URL stays a URL."""
  return os.fspath(epath.Path(os.fspath(base)).joinpath(*parts))


def as_path(path: PathLike) -> Path:
  """An already resolved path (a string from `resolve_str`/`join`) as an epath.Path."""
  return epath.Path(os.fspath(path))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def is_dir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def is_file(path: PathLike) -> bool:
  path = as_path(path)
  return path.exists() and not path.is_dir()


def makedirs(path: PathLike) -> None:
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  with as_path(path).open('rb') as f:
    return f.read().decode('utf-8', errors='replace')


def read_utf8(path: PathLike) -> IO[str]:
  """`path` opened for reading as strict UTF-8 text with universal newlines (as `open(path,
  encoding='utf-8')`); a UnicodeDecodeError surfaces on the read that meets bad bytes."""
  return io.TextIOWrapper(as_path(path).open('rb'), encoding='utf-8')


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` whole (an object on a store; a plain write locally)."""
  as_path(path).write_bytes(data)


def remove(path: PathLike) -> None:
  """Removes the file `path` if it exists."""
  as_path(path).unlink(missing_ok=True)


def size_and_mtime(path: PathLike) -> tuple[int, int]:
  """(bytes, modification time) of a file: locally st_size and st_mtime_ns, at a URL the
  store's size and its update time in seconds."""
  text = os.fspath(path)
  if not is_url(text):
    stat = os.stat(text)
    return stat.st_size, stat.st_mtime_ns
  stat = as_path(text).stat()
  return int(stat.length), int(stat.mtime)


def has_magic(pattern: str) -> bool:
  """Whether `pattern` holds glob characters (`*`, `?`, `[`)."""
  return glob_lib.has_magic(pattern)


def glob(pattern: str, what: str) -> list[str]:
  """The paths matching the glob `pattern`, sorted (a pattern without glob characters: itself
  when it exists).

  Local: `~` expanded, `**` recursive, results absolute. URL: `*`, `?` and `[...]` in any part
  after the bucket; `**` is refused (a UserInputError naming `what`), since epath does not walk an
  object store recursively."""
  if not has_magic(pattern):
    path = resolve_str(pattern, what)
    return [path] if exists(path) else []
  if not is_url(pattern):
    matches = sorted(glob_lib.glob(os.path.expanduser(pattern), recursive=True))
    return [os.path.abspath(match) for match in matches]
  resolve(pattern, what)  # a known scheme
  if '**' in pattern:
    raise UserInputError(f'{what} {pattern}: `**` is not supported in a URL; use one `*` per '
                         'directory level')
  scheme, rest = pattern.split('://', 1)
  parts = rest.split('/')
  first = next(i for i, part in enumerate(parts) if has_magic(part))
  if first == 0:
    raise UserInputError(f'{what} {pattern}: the bucket name cannot be a glob')
  base = f'{scheme}://' + '/'.join(parts[:first])
  return sorted(os.fspath(match) for match in as_path(base).glob(posixpath.join(*parts[first:])))


def glob_files(pattern: str, what: str) -> list[str]:
  """`glob`, with one-line errors naming `what`: a DataError when the listing fails (any backend's
  error) or nothing matches; a UserInputError of `glob` (an unknown scheme, `**` in a URL) as it
  is."""
  try:
    matches = glob(pattern, what)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise DataError(f'{what}: cannot list {pattern}: {reason(e)}') from None
  if not matches:
    raise DataError(f'{what}: no file matches {pattern}')
  return matches


def write_atomically(path: PathLike, data: str | bytes) -> None:
  """Writes `data` to a temporary file next to `path` and renames it over `path`, so `path` is
  never truncated in place: it holds the old or the new contents whole.

  Local: the temporary file is fsynced, `os.replace` is atomic and the directory is fsynced.
  URL (object store): the temporary object is written whole, then renamed, which the store does
  as copy + delete; the copy replaces `path` in one step (an object is never half written), so a
  crash between the two leaves `path` old or new and at most a stray `<name>.tmp*` object, which
  the next write of `path` replaces. On failure the temporary file is removed and the error
  passed on."""
  raw = data.encode('utf-8') if isinstance(data, str) else data
  text = os.fspath(path)
  if not is_url(text):
    _write_local_atomically(text, raw)
    return
  target = as_path(text)
  temporary = target.parent / f'{target.name}.tmp'
  try:
    with temporary.open('wb') as f:
      f.write(raw)
    temporary.replace(target)
  except BaseException:
    if temporary.exists():
      temporary.unlink(missing_ok=True)
    raise


def _write_local_atomically(path: str, raw: bytes) -> None:
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(raw)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  fsync_directory(directory)


def fsync_directory(directory: str) -> None:
  """Makes a rename durable (where the platform allows opening a directory)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def rename(source: PathLike, destination: PathLike) -> None:
  """Moves a file or directory (atomic locally; copy + delete on an object store)."""
  as_path(source).rename(as_path(destination))


def copy_tree(source: PathLike, destination: PathLike) -> None:
  """Copies every file under `source` to the same place under `destination` (either may be a
  URL); each file is written whole before the next one starts."""
  source, destination = as_path(source), as_path(destination)
  destination.mkdir(parents=True, exist_ok=True)
  for child in source.iterdir():
    if child.is_dir():
      copy_tree(child, destination / child.name)
    else:
      (destination / child.name).write_bytes(child.read_bytes())


def reason(error: BaseException) -> str:
  """A one-line reason for a file-system error of any backend."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = str(error).strip().splitlines()
  first = text[0].strip() if text else ''
  return f'{type(error).__name__}: {first}' if first else type(error).__name__
