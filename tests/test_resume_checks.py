"""What a resume checks, end to end through `train`: a damaged latest checkpoint falls back to the
newest intact one (train/checkpointing.py), and a changed model shape, tokenizer or corpus is
refused with one line (train/run_identity.py) unless `train.allow_data_change` allows the data."""
import os

import pytest

from rlp_jax.errors import RunChangedError
from rlp_jax.train.loop import train
from tests.test_checkpoint_integrity import flip_bytes, payload_file
from rlp_jax.train.metrics_writer import read_metrics

pytestmark = pytest.mark.slow


def test_flipped_bytes_in_the_latest_step_resume_from_the_one_before(small_config, tmp_path,
                                                                    capsys):
  small_config.rlp.enabled = False  # the objective plays no part here
  small_config.train.num_steps = 6
  small_config.train.checkpoint_every = 2
  reference = str(tmp_path / 'reference')
  train(small_config, reference)
  workdir = str(tmp_path / 'run')
  train(small_config, workdir, stop_at_step=4)  # checkpoints 2 and 4
  flip_bytes(payload_file(os.path.join(workdir, 'checkpoints', '4')))
  capsys.readouterr()
  result = train(small_config, workdir)
  out = capsys.readouterr().out
  assert 'checkpoint step 4 is damaged (checksum of' in out, out
  assert 'falling back to step 2' in out, out
  assert result.first_step == 2
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', 'damaged', '4'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6', 'damaged']
  losses = lambda workdir: [(row['step'], row['ntp_loss']) for row in read_metrics(workdir)]
  assert losses(workdir) == losses(reference)  # steps 3..6 retrained from the intact step 2


def test_a_resume_with_a_changed_model_corpus_or_tokenizer_is_refused(small_config, tmp_path):
  small_config.rlp.enabled = False
  small_config.train.num_steps = 2
  workdir = str(tmp_path / 'run')
  train(small_config, workdir)
  small_config.train.num_steps = 3

  wider = small_config.copy_and_resolve_references()
  wider.model.intermediate_size = 192
  with pytest.raises(RunChangedError, match=r'model\.intermediate_size 128 -> 192') as error:
    train(wider, workdir)
  assert '\n' not in str(error.value)

  # More documents: a new corpus; its tokenizer, trained on the corpus, changes too.
  more = small_config.copy_and_resolve_references()
  more.data.num_documents = 700
  with pytest.raises(RunChangedError, match='the tokenizer changed') as error:
    train(more, workdir)
  assert 'training documents changed' in str(error.value)
  # Following the message's advice (the checkpoint's tokenizer file, and the flag) resumes.
  more.tokenizer.path = str(error.value).split('--config.tokenizer.path=')[1].split()[0]
  with pytest.raises(RunChangedError, match='allow_data_change'):
    train(more, workdir)
  more.train.allow_data_change = True
  assert train(more, workdir).first_step == 2
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'damaged'))  # none was moved
