"""Test helpers, one module per kind, imported by name (``from support.images import make_image``).

tests/ is on ``sys.path`` because pytest's default ``prepend`` import mode puts the folder of
the rootmost ``conftest.py`` there (tests/ has no ``__init__.py``), so ``support`` imports from
every test module, sub-folders included. This file re-exports nothing: each name has one home.

- ``support.paths``: ``REPO_ROOT``, ``DATA`` (tests/data).
- ``support.images``: ``make_image`` (size, colour or seed, format), ``image_bytes``,
  ``make_bomb_png``, ``truncate``.
- ``support.manifests``: ``write_manifest`` (a generic manifest, or ``n_jobs`` numbered jobs
  against ``url``), ``dump_yaml``, ``lock_doc``.
- ``support.cli``: ``Run`` (code, stdout, stderr), ``run_runner`` (``python -m runner`` as a
  subprocess), ``run_main`` (``runner.cli.main`` in-process), ``log_events``, ``error_text``.
- ``support.apply``: a real sandbox on loopback (``sandbox``, ``ledger``), ``SECRET``,
  ``runner`` (``run_runner`` with that key and ``CI=true``), ``plan_json``.
- ``support.clock``: ``FakeClock``.
- ``support.asgi``: ``read_body`` for small ASGI stand-ins.
"""
