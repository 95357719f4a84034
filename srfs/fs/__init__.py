"""The ``/run/sr`` filesystem: the tree as a pure model, and its pyfuse3 adapter.

:mod:`~srfs.fs.tree` renders and applies; :mod:`~srfs.fs.fuse` alone
imports pyfuse3 and trio; :mod:`~srfs.fs.scratch` bounds the memory that
editors' temporary files may take.
"""
