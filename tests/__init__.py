# The test suite (a package so test files can share helpers: tests.tolerance, tests.tiny_models, ...).
