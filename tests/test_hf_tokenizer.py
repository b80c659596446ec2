"""HF tokenizer.json behind the Tokenizer protocol: round trips, think ids, special ids, errors.

Every tokenizer.json is trained here with the `tokenizers` library (nothing is downloaded).
"""

from __future__ import annotations

import json

import ml_collections
import pytest

from rlp_jax.data.tokenizer import Tokenizer, build_tokenizer
from rlp_jax.errors import DataError
from tests import helpers

tokenizers = pytest.importorskip('tokenizers')
from rlp_jax.data.hf_tokenizer import HFJsonTokenizer  # pylint: disable=wrong-import-position

DOCS = helpers.bpe_documents()  # the 200 corpus documents the tokenizers are trained on
SPECIALS = list(helpers.BPE_SPECIALS)
# A byte-level BPE tokenizer.json (exact round trips) trained on DOCS, `specials` added tokens.
train_byte_level_bpe = helpers.train_byte_level_bpe


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('hf_tok')
  train_byte_level_bpe(directory / 'tokenizer.json')
  return directory


@pytest.fixture(scope='module')
def tokenizer(tokenizer_dir) -> HFJsonTokenizer:
  return HFJsonTokenizer(str(tokenizer_dir / 'tokenizer.json'))


def tokenizer_configs(path: str) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  tok = ml_collections.ConfigDict(dict(kind='hf_json', path=path, vocab_size=512))
  return tok, ml_collections.ConfigDict(dict(corpus='reasoning'))


def test_special_ids_come_from_the_added_tokens(tokenizer):
  assert isinstance(tokenizer, Tokenizer)
  ids = {name: tokenizer.token_id(name) for name in SPECIALS}
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (
      ids['<pad>'], ids['<s>'], ids['</s>'])
  assert (tokenizer.think_start_id, tokenizer.think_end_id) == (ids['<think>'], ids['</think>'])
  assert len(set(ids.values())) == 5
  assert 300 < tokenizer.vocab_size <= 400 and max(ids.values()) < tokenizer.vocab_size


def test_think_tokens_are_single_ids(tokenizer):
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
  ids = tokenizer.encode(text)
  assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids  # encode adds neither
  assert tokenizer.decode(ids) == text


def test_decode_drops_pad_bos_eos(tokenizer):
  ids = tokenizer.encode('x = 3')
  framed = [tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]
  assert tokenizer.decode(framed) == 'x = 3'


def test_qwen3_style_config_without_bos_uses_eos(tmp_path):
  """Qwen3: no bos (`"bos_token": null`), eos = pad = <|endoftext|>, think tokens added."""
  path = train_byte_level_bpe(tmp_path / 'tokenizer.json',
                              ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>',
                               '</think>'])
  config = {'bos_token': None, 'eos_token': '<|endoftext|>',
            'pad_token': {'content': '<|endoftext|>', 'special': True}}
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(config))
  tokenizer = HFJsonTokenizer(str(tmp_path))  # a directory holding tokenizer.json
  endoftext = tokenizer.token_id('<|endoftext|>')
  assert tokenizer.path == path
  assert tokenizer.bos_id == tokenizer.eos_id == tokenizer.pad_id == endoftext
  assert tokenizer.decode([endoftext] + tokenizer.encode('a b') + [endoftext]) == 'a b'

  from rlp_jax.data.batches import DocumentBatches  # pylint: disable=import-outside-toplevel
  batches = DocumentBatches(DOCS[:4], tokenizer, batch_size=2, seq_len=256, seed=0)
  batch = batches.batch(0)
  for row, mask in zip(batch['tokens'], batch['mask']):
    real = row[mask]
    assert real[0] == endoftext and real[-1] == endoftext
    assert tokenizer.decode(real) in DOCS[:4]


def test_tokenizer_config_overrides_the_fallbacks(tokenizer_dir, tmp_path):
  path = train_byte_level_bpe(tmp_path / 'tokenizer.json', SPECIALS + ['<eod>'])
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<eod>'}))
  tokenizer = HFJsonTokenizer(path)
  assert tokenizer.eos_id == tokenizer.token_id('<eod>')
  assert tokenizer.bos_id == tokenizer.token_id('<s>')
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'pad_token': '<nothing>'}))
  with pytest.raises(DataError, match=r"pad_token '<nothing>' of .*tokenizer_config\.json"):
    HFJsonTokenizer(path)


def test_missing_think_tokens_are_named(tmp_path):
  path = train_byte_level_bpe(tmp_path / 'tokenizer.json', ['<pad>', '<s>', '</s>', '<think>'])
  with pytest.raises(DataError, match=f'{path} has no </think> token'):
    HFJsonTokenizer(path)


def test_think_in_the_vocabulary_but_not_an_added_token_is_an_error(tmp_path):
  vocab = {'<unk>': 0, '</s>': 1, '<think>': 2, '</think>': 3, '<': 4, 'think': 5, '>': 6}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()  # splits '<think>' in three
  tok.save(str(tmp_path / 'tokenizer.json'))
  with pytest.raises(DataError, match='the text <think> does not encode to its single id 2'):
    HFJsonTokenizer(str(tmp_path))


def test_missing_eos_is_named(tmp_path):
  path = train_byte_level_bpe(tmp_path / 'tokenizer.json', ['<think>', '</think>'])
  with pytest.raises(DataError, match='has no eos token'):
    HFJsonTokenizer(path)


def test_build_tokenizer_dispatches_hf_json(tokenizer_dir, tmp_path):
  for path in (tokenizer_dir, tokenizer_dir / 'tokenizer.json'):
    tokenizer = build_tokenizer(*tokenizer_configs(str(path)))
    assert isinstance(tokenizer, HFJsonTokenizer)
    assert tokenizer.encode('<think>') == [tokenizer.think_start_id]
  missing = tmp_path / 'nothing_here.json'
  with pytest.raises(DataError, match=f'tokenizer.path: no such file {missing}$'):
    build_tokenizer(*tokenizer_configs(str(missing)))
  (tmp_path / 'empty_dir').mkdir()
  with pytest.raises(DataError, match=f'no such file {tmp_path / "empty_dir" / "tokenizer.json"}'):
    build_tokenizer(*tokenizer_configs(str(tmp_path / 'empty_dir')))
  garbage = tmp_path / 'broken.json'
  garbage.write_text('{not json')
  with pytest.raises(DataError, match=f'cannot load {garbage}'):
    build_tokenizer(*tokenizer_configs(str(garbage)))
