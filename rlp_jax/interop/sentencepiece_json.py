"""A sentencepiece BPE model → a Hugging Face tokenizer.json that encodes exactly as it does.

transformers' AutoTokenizer loads a tokenizer.json with the `tokenizers` library alone (no
sentencepiece, no conversion at load time). The conversion:

- model: BPE over the sentencepiece vocabulary (same ids), its merges every split `a + b` of a
  normal piece into two normal pieces, ranked by the merged piece's score (sentencepiece's BPE
  merges the adjacent pair whose concatenation scores highest); byte fallback and unk as the
  model has them (consecutive unknown characters fuse into one unk, as in sentencepiece);
- normalizer: the model's precompiled character map (none for rlp_jax's 'identity' rule), then
  ' ' → '▁'; no pre-tokenizer (sentencepiece encodes the whole text);
- added tokens: the user-defined symbols (`<think>`, `</think>`, newline: single ids wherever
  they occur, not special) and the control symbols (pad, bos, eos) and unk, special. A
  sentencepiece model never reads a control symbol out of text ('<s>' in a document is three
  pieces), so the tokenizer is set to encode special tokens' text as text
  (`encode_special_tokens`; transformers: `split_special_tokens`, which tokenizer_config.json sets);
- post-processor: bos before the text, as an rlp_jax document row starts (`bos … eos`);
- decoder: '▁' → ' ', bytes → text.

What it cannot reproduce is refused in one line (another model type, a dummy prefix, removal of
extra whitespace); what it produces is checked against the sentencepiece model on probe texts and
on every piece's own text before it is written.
"""
from __future__ import annotations

from typing import Any

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from rlp_jax.errors import DataError

_SPACE = '\u2581'  # sentencepiece's visible space '▁'
# Encoded by both tokenizers before a conversion is written (with every piece's own text).
PROBE_TEXTS = (
    'Question: 2 + 2?\n<think> 2 + 2 = 4 </think>\nAnswer: 4.',
    'a<think>b</think>c',
    '  leading and  double  spaces, trailing \n\n',
    'tab\tend\r\nline\n\n\nthree',
    'Unseen: héllo wörld, 世界, emoji 🙂, ß ∑ √2, \u00a0nbsp',
    '0123456789 1,000,000.25 -7e-3',
    '<s> </s> <pad> <unk> <|endoftext|>',
    '',
)


def _model_proto(proto: bytes) -> Any:
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString(proto)
  return model


def _check_convertible(model: Any, where: str) -> None:
  trainer, normalizer = model.trainer_spec, model.normalizer_spec
  refusals = []
  if trainer.model_type != trainer.BPE:
    refusals.append(f'model type {trainer.ModelType.Name(trainer.model_type)} (only BPE)')
  if normalizer.add_dummy_prefix:
    refusals.append('add_dummy_prefix')
  if normalizer.remove_extra_whitespaces:
    refusals.append('remove_extra_whitespaces')
  if not normalizer.escape_whitespaces:
    refusals.append('escape_whitespaces=false')
  if refusals:
    raise DataError(f'tokenizer.path: sentencepiece model {where} cannot be exported as a '
                    f'tokenizer.json ({", ".join(refusals)}; rlp_jax trains BPE models without '
                    'them)')


def tokenizer_from_sentencepiece(proto: bytes, where: str) -> Tokenizer:
  """The `tokenizers` tokenizer equivalent to the serialized sentencepiece model `proto`
  (DataError naming `where` when it cannot be converted or the conversion encodes differently)."""
  model = _model_proto(proto)
  _check_convertible(model, where)
  kinds = type(model).SentencePiece  # the piece types: NORMAL, USER_DEFINED, CONTROL, ...
  normal = kinds.NORMAL
  pieces = list(model.pieces)
  vocab = {piece.piece: i for i, piece in enumerate(pieces)}
  merges = []
  for piece in pieces:
    if piece.type != normal:
      continue
    text = piece.piece
    for cut in range(1, len(text)):
      left, right = vocab.get(text[:cut]), vocab.get(text[cut:])
      if (left is not None and right is not None and pieces[left].type == normal
          and pieces[right].type == normal):
        merges.append((-piece.score, left, right, text[:cut], text[cut:]))
  merges.sort()
  unk = model.trainer_spec.unk_piece or '<unk>'
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges],
                                   unk_token=unk if unk in vocab else None, fuse_unk=True,
                                   byte_fallback=model.trainer_spec.byte_fallback))
  steps = [normalizers.Replace(' ', _SPACE)]
  if model.normalizer_spec.precompiled_charsmap:
    steps.insert(0, normalizers.Precompiled(model.normalizer_spec.precompiled_charsmap))
  tokenizer.normalizer = normalizers.Sequence(steps)
  tokenizer.decoder = decoders.Sequence([decoders.Replace(_SPACE, ' '), decoders.ByteFallback(),
                                         decoders.Fuse()])
  tokenizer.add_tokens([AddedToken(piece.piece, special=False, normalized=False)
                        for piece in pieces if piece.type == kinds.USER_DEFINED])
  tokenizer.add_special_tokens([AddedToken(piece.piece, special=True, normalized=False)
                                for piece in pieces
                                if piece.type in (kinds.CONTROL, kinds.UNKNOWN)])
  tokenizer.encode_special_tokens = True
  bos_id = model.trainer_spec.bos_id
  if 0 <= bos_id < len(pieces):
    bos = pieces[bos_id].piece
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f'{bos} $A', pair=f'{bos} $A {bos} $B', special_tokens=[(bos, bos_id)])
  _check_same_encoding(proto, tokenizer, [piece.piece.replace(_SPACE, ' ') for piece in pieces
                                          if piece.type == normal], where)
  return tokenizer


def _check_same_encoding(proto: bytes, tokenizer: Tokenizer, piece_texts: list[str],
                         where: str) -> None:
  processor = spm.SentencePieceProcessor()
  processor.load_from_serialized_proto(proto)
  texts = list(PROBE_TEXTS) + piece_texts + [' '.join(piece_texts)]
  expected = processor.encode(texts, out_type=int)
  found = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
  for text, ours, theirs in zip(texts, expected, found):
    if ours != theirs:
      raise DataError(f'tokenizer.path: the tokenizer.json converted from sentencepiece model '
                      f'{where} encodes {text[:40]!r} as {theirs[:8]}…, the model as '
                      f'{ours[:8]}…')
