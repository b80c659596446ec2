"""A `gs://` that runs in the tests without a network: the same code path as a real bucket.

`use_local_gcs(root, monkeypatch)` maps `gs://<bucket>/<path>` to `<root>/<bucket>/<path>` below
the three libraries that do the I/O, so everything above them (rlp_jax, etils.epath's `gs://`
path class and its fsspec backend, orbax's `gs://` branches: CommitFileTemporaryPath, gcs rmtree,
the tensorstore kvstore spec) runs exactly as for a real bucket:

- fsspec: the `gs`/`gcs` filesystem epath asks fsspec for (gcsfs in production; epath uses it
  when TensorFlow is absent) is `LocalBucketFileSystem`, with object-store semantics where rlp_jax relies on them: no
  append (gcsfs has none), a rename is a copy then a delete, writing creates the "directories";
  a bucket that was not created (`make_bucket`) does not exist.
- orbax: `gcs_utils.get_kvstore_for_gcs` (the tensorstore `gcs` driver spec) returns the `file`
  driver spec of the mapped directory, and the HNS-folder clean-up is off (it asks the GCS API).

`record_reads(monkeypatch)` logs every `read` on a file opened for reading through the stand-in
(bucket path, offset, bytes returned): what a process fetched from the bucket.
"""
from __future__ import annotations

import os

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from etils.epath import backend as epath_backend


class RecordedReads(list):
  """(bucket path, offset, bytes returned) of every read through the stand-in."""


class _RecordingOpener(LocalFileOpener):
  """A file opened for reading whose `read`s are logged in `log`."""

  def __init__(self, *args, log: RecordedReads, name: str, **kwargs):
    super().__init__(*args, **kwargs)
    self._log, self._name = log, name

  def read(self, *args, **kwargs):
    offset = self.f.tell()
    data = self.f.read(*args, **kwargs)
    self._log.append((self._name, offset, len(data)))
    return data


class LocalBucketFileSystem(LocalFileSystem):
  protocol = ('gs', 'gcs')
  root_marker = ''
  bucket_root = ''
  read_log: RecordedReads | None = None

  def __init__(self, *args, **kwargs):
    super().__init__(auto_mkdir=True)

  @classmethod
  def _strip_protocol(cls, path):
    """`gs://bucket/x` and gcsfs's own names (`bucket/x`) -> the local path."""
    path = os.fspath(path) if not isinstance(path, str) else path
    for prefix in ('gs://', 'gcs://'):
      if path.startswith(prefix):
        path = path[len(prefix):]
        break
    path = path.rstrip('/')
    if path == cls.bucket_root or path.startswith(cls.bucket_root + '/'):
      return path
    return os.path.join(cls.bucket_root, path.lstrip('/')) if path else cls.bucket_root

  def _name(self, local):
    """A local path -> the name gcsfs gives it (`bucket/x`, no protocol)."""
    return os.path.relpath(local, self.bucket_root)

  def ls(self, path, detail=False, **kwargs):
    entries = super().ls(path, detail=detail, **kwargs)
    if detail:
      return [dict(entry, name=self._name(entry['name'])) for entry in entries]
    return [self._name(entry) for entry in entries]

  def glob(self, path, maxdepth=None, **kwargs):
    import glob as glob_lib  # pylint: disable=import-outside-toplevel
    return sorted(self._name(p) for p in glob_lib.glob(self._strip_protocol(path)))

  def info(self, path, **kwargs):
    entry = super().info(path, **kwargs)
    return dict(entry, name=self._name(entry['name']))

  def _check_bucket(self, path):
    local = self._strip_protocol(path)
    bucket = os.path.relpath(local, self.bucket_root).split(os.sep)[0]
    if not os.path.isdir(os.path.join(self.bucket_root, bucket)):
      raise FileNotFoundError(2, f'bucket {bucket} does not exist', path)

  def _open(self, path, mode='rb', **kwargs):
    if 'a' in mode:
      raise NotImplementedError('File mode not supported')  # as gcsfs
    if 'w' in mode:
      self._check_bucket(path)
    if 'r' in mode and self.read_log is not None:
      local = self._strip_protocol(path)
      return _RecordingOpener(local, mode, fs=self, log=self.read_log, name=self._name(local))
    return super()._open(path, mode=mode, **kwargs)

  def makedirs(self, path, exist_ok=False):
    self._check_bucket(path)
    return super().makedirs(path, exist_ok=exist_ok)

  def mkdir(self, path, create_parents=True, **kwargs):
    self._check_bucket(path)
    return super().mkdir(path, create_parents=create_parents, **kwargs)

  def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
    """An object store's rename: copy everything, then delete the source."""
    if self.isdir(path1):
      self.copy(path1, path2, recursive=True)
      self.rm(path1, recursive=True)
    else:
      self.cp_file(path1, path2)
      self.rm_file(path1)


def use_local_gcs(root, monkeypatch) -> str:
  """Routes `gs://` to `root` for the rest of the test (undone with `monkeypatch`); returns it."""
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=import-outside-toplevel
  root = os.fspath(root)
  os.makedirs(root, exist_ok=True)
  monkeypatch.setattr(LocalBucketFileSystem, 'bucket_root', root)
  monkeypatch.setenv('EPATH_USE_TF', 'false')  # the fsspec backend, as without TensorFlow
  filesystem = LocalBucketFileSystem(skip_instance_cache=True)

  def get_filesystem(name):  # epath's lookup of `fsspec.filesystem('gcs')` (gcsfs)
    return filesystem if name in ('gs', 'gcs') else fsspec.filesystem(name)

  monkeypatch.setattr(epath_backend.fsspec_backend, '_get_filesystem', get_filesystem,
                      raising=False)

  def file_kvstore(path):
    bucket, inside = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {'driver': 'file', 'path': os.path.join(root, bucket, inside)}

  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', file_kvstore)
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  return root


def record_reads(monkeypatch) -> RecordedReads:
  """From now on (undone with `monkeypatch`), every read through the stand-in is logged in the
  returned list."""
  log = RecordedReads()
  monkeypatch.setattr(LocalBucketFileSystem, 'read_log', log)
  return log


def make_bucket(root, name: str) -> str:
  os.makedirs(os.path.join(os.fspath(root), name), exist_ok=True)
  return f'gs://{name}'
