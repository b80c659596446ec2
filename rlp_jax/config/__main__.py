"""`python -m rlp_jax.config --markdown` prints the key table rendered from the declarations;
`python -m rlp_jax.config --update-docs [PATH]` writes it into docs/configuration.md (or PATH)."""
from __future__ import annotations

import argparse
import pathlib

from rlp_jax.config.markdown import DOCS_PATH, render_markdown, update_docs


def main() -> None:
  parser = argparse.ArgumentParser(prog='python -m rlp_jax.config', description=__doc__)
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument('--markdown', action='store_true', help='print the key table')
  group.add_argument('--update-docs', nargs='?', const=str(DOCS_PATH), metavar='PATH',
                     help=f'rewrite the table between the markers of PATH (default {DOCS_PATH})')
  args = parser.parse_args()
  if args.markdown:
    print(render_markdown(), end='')
    return
  path = pathlib.Path(args.update_docs)
  print(f'{path}: ' + ('table updated' if update_docs(path) else 'already up to date'))


if __name__ == '__main__':
  main()
