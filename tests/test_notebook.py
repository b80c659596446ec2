"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient, a fresh Jupyter kernel) and shows
what it promises: thoughts as text with their gains, the heatmap, the RLP steps and their plot.

Outside Colab the install cell does nothing: the kernel uses the rlp_jax this test runs with.
"""
from __future__ import annotations

import os
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = os.path.join(os.path.dirname(__file__), '..', 'notebooks', 'quickstart.ipynb')
BUDGET_S = 180  # the bound for the whole notebook on 2 CPU cores


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_quickstart_notebook_runs_without_a_cell_error(shared_data_dir, monkeypatch):
  monkeypatch.setenv('RLP_JAX_DATA_DIR', shared_data_dir)
  monkeypatch.setenv('RLP_JAX_QUICKSTART_SOURCE', 'tiny')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  started = time.perf_counter()
  # Any cell's exception raises CellExecutionError here, naming the cell.
  nbclient.NotebookClient(notebook, timeout=BUDGET_S, kernel_name='python3').execute()
  seconds = time.perf_counter() - started
  assert seconds < BUDGET_S, f'the notebook took {seconds:.0f} s'

  text = ''.join(output.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                 for output in cell.outputs)
  images = [output for cell in notebook.cells if cell.cell_type == 'code'
            for output in cell.outputs if 'image/png' in output.get('data', {})]
  assert text.count('<think>') >= 20  # 4 thoughts at each of 5 positions, as text
  assert text.count(' nats  <think>') == 20
  assert 'step 8: reward' in text
  assert len(images) == 2  # the heatmap, then reward and thought length over the steps
  assert 'mesh' in text
