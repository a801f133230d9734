"""Suite-wide fixtures."""

from __future__ import annotations

import locale

import pytest


@pytest.fixture(autouse=True)
def _restore_locale():
    """Put the process locale back after each test.

    SimpleITK's DICOM writer (GDCM) switches the C locale to "C" and leaves it there, which turns Python's preferred
    encoding into ASCII for every later test of the session (``subprocess.run(text=True)``, ``open()``). Tests that
    write DICOM fixtures would otherwise change the behaviour of the tests that run after them.
    """
    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def fast_sqlite():
    """Throwaway test MLflow stores need no fsync: creating the MLflow schema drops from seconds to under one."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def no_sync(dbapi_connection, _record) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            dbapi_connection.execute("PRAGMA synchronous=OFF")

    event.listen(Engine, "connect", no_sync)
    yield
    event.remove(Engine, "connect", no_sync)


@pytest.fixture
def one_thread():
    """Run the test on one CPU thread (torch), then restore the thread count: small networks and exact comparisons."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
