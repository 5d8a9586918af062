"""The zoo: architectures written the way public code writes them, trained on generated tasks.

Shared test infrastructure (not a test module): ``tests/zoo/test_zoo_*.py`` use it, and so does
``scripts/zoo_status.py``. ``train.trained(name)`` returns a trained float model and its data; ``train.ZOO``
lists the models. Architectures are importable for the CLI as ``--arch tests.zoo.models:NAME``.
"""
