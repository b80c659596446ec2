"""SentencePiece tokenizer: training, round trips, think symbols, caching."""

import os

import ml_collections
import pytest

from rlp_jax.config import base_config
from rlp_jax.data import tokenizer as tokenizer_lib
from rlp_jax.data.reasoning_corpus import generate_documents
from rlp_jax.data.tokenizer import SentencePieceTokenizer, Tokenizer, build_tokenizer
from rlp_jax.data.tokenizer import train_sentencepiece
from rlp_jax.errors import DataError

DOCS = list(generate_documents(300, seed=0))


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory) -> SentencePieceTokenizer:
  prefix = str(tmp_path_factory.mktemp('tok') / 'sp')
  return train_sentencepiece(DOCS, vocab_size=512, model_prefix=prefix)


def configs(data_dir, path='', vocab_size=512):
  data = base_config().data
  data.update(dict(corpus='reasoning', data_dir=str(data_dir), num_documents=300, corpus_seed=0,
                   files='', text_field='text'))
  tok = ml_collections.ConfigDict(dict(kind='sentencepiece', path=path, vocab_size=vocab_size))
  return tok, data


def test_special_ids(tokenizer):
  assert isinstance(tokenizer, Tokenizer)
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 2, 3)
  specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.think_start_id,
              tokenizer.think_end_id}
  assert len(specials) == 5
  assert all(0 <= i < tokenizer.vocab_size for i in specials)
  assert 300 < tokenizer.vocab_size <= 512


def test_think_symbols_are_single_ids(tokenizer):
  ids = tokenizer.encode('a <think> b </think> c')
  assert ids.count(tokenizer.think_start_id) == 1 and ids.count(tokenizer.think_end_id) == 1
  assert ids.index(tokenizer.think_start_id) < ids.index(tokenizer.think_end_id)
  assert tokenizer.encode('<think>') == [tokenizer.think_start_id]
  assert tokenizer.encode('</think>') == [tokenizer.think_end_id]
  assert tokenizer.decode([tokenizer.think_start_id, tokenizer.think_end_id]) == '<think></think>'


@pytest.mark.parametrize('text', [
    DOCS[0], DOCS[1], DOCS[17],
    'Question: 2 + 2?\n<think> 2 + 2 = 4 </think>\nAnswer: 4.',
    '  leading and  double  spaces, trailing \n\n',
    'Unseen: héllo wörld, 世界, emoji 🙂, tab\tend, ß ∑ √2',
    '',
])
def test_round_trip(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_whole_corpus(tokenizer):
  assert all(tokenizer.decode(tokenizer.encode(doc)) == doc for doc in DOCS)


def test_decode_drops_pad_bos_eos(tokenizer):
  ids = tokenizer.encode('Answer: 57.')
  padded = [tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]
  assert tokenizer.decode(padded) == 'Answer: 57.'


def test_training_is_deterministic(tmp_path):
  a = train_sentencepiece(DOCS, 400, str(tmp_path / 'a'))
  b = train_sentencepiece(DOCS, 400, str(tmp_path / 'b'))
  assert (tmp_path / 'a.model').read_bytes() == (tmp_path / 'b.model').read_bytes()
  assert a.encode(DOCS[3]) == b.encode(DOCS[3])


def test_small_vocab_trains_without_byte_fallback(tmp_path):
  small = train_sentencepiece(DOCS, 256, str(tmp_path / 'small'))
  assert small.vocab_size <= 256
  assert all(small.decode(small.encode(doc)) == doc for doc in DOCS[:50])
  assert small.encode('<think>') == [small.think_start_id]


def test_build_tokenizer_trains_once_and_caches(tmp_path, monkeypatch):
  tok_config, data_config = configs(tmp_path)
  first = build_tokenizer(tok_config, data_config)
  path = tokenizer_lib.cached_tokenizer_path(tok_config, data_config) + '.model'
  assert first.model_path == path and os.path.isfile(path)
  assert 'v512' in os.path.basename(path) and 'n300_s0' in os.path.basename(path)
  assert [f for f in os.listdir(os.path.dirname(path)) if '.tmp' in f] == []

  def no_training(*args, **kwargs):
    raise AssertionError('retrained although a cached model exists')

  monkeypatch.setattr(tokenizer_lib, 'train_sentencepiece_proto', no_training)
  second = build_tokenizer(tok_config, data_config)
  assert second.encode(DOCS[0]) == first.encode(DOCS[0])
  other = data_config.copy_and_resolve_references()
  other.corpus_seed = 1
  with pytest.raises(AssertionError, match='retrained'):  # another corpus needs its own model
    build_tokenizer(tok_config, other)


def test_build_tokenizer_other_corpus_gets_other_cache(tmp_path):
  tok_config, data_config = configs(tmp_path)
  other = data_config.copy_and_resolve_references()
  other.corpus_seed = 1
  assert (tokenizer_lib.cached_tokenizer_path(tok_config, data_config)
          != tokenizer_lib.cached_tokenizer_path(tok_config, other))


def test_build_tokenizer_from_path(tmp_path, tokenizer):
  tok_config, data_config = configs(tmp_path, path=tokenizer.model_path)
  loaded = build_tokenizer(tok_config, data_config)
  assert loaded.encode(DOCS[5]) == tokenizer.encode(DOCS[5])


def test_missing_path_names_it(tmp_path):
  missing = str(tmp_path / 'missing.model')
  with pytest.raises(DataError, match=missing):
    build_tokenizer(*configs(tmp_path, path=missing))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(DataError, match='junk.model'):
    build_tokenizer(*configs(tmp_path, path=str(tmp_path / 'junk.model')))
