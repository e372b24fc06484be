"""Batch relighting: many images in, a results table out, on one machine or a Ray cluster."""
