"""Rakuten France multimodal product classification: library behind the stage scripts in ``src/``.

Data flows one way: the stage scripts (``src/*.py``) call this package; nothing here imports them.
"""
__version__ = "0.1.0"
