"""Reduction with provenance: calibrate lights, register, stack, and the nightly loop.

Pixel work (:mod:`~archive.reduce.calibrate`, :mod:`~archive.reduce.align`,
:mod:`~archive.reduce.stack`, :mod:`~archive.reduce.preview`) is plain functions of paths and
numbers, run through an executor (:mod:`~archive.reduce.executor`); the catalogue side
(:mod:`~archive.db.provenance`, :mod:`~archive.reduce.pipeline`) takes a ``Session`` or an
``Engine`` and records every product as a derived frame linked to its inputs.
"""
