"""The test suite (a package, so that tests and bench/ scripts import tests.helpers)."""
