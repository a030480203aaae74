"""Shared fixtures live in tests/fixtures/, one module per real service or kind of data."""

pytest_plugins = [
    "tests.fixtures.media",
    "tests.fixtures.comfy",
    "tests.fixtures.s3",
    "tests.fixtures.http_files",
    "tests.fixtures.tiny_worker",
    "tests.fixtures.postgres",
]
