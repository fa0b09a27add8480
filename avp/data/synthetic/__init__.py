"""Synthetic multi-view head clips on the built-in head model (``avp data synth``): subject sampling (shape,
appearance, hair styles, beards, brows, glasses), teacher Gaussians, expression/pose sequences, cameras, renders."""

from __future__ import annotations

from avp.data.synthetic.generate import SynthConfig, make_subject, synthesize

__all__ = ["SynthConfig", "make_subject", "synthesize"]
