"""Plumbing every room shares: crash-safe outputs, HDF5 helpers, hand-written tables, the batch
runner over many slides, and safe weight loading (encoders and MIL checkpoints alike)."""
