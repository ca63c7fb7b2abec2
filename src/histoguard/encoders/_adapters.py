"""Encoders users bring: imported for their registrations (optional dependencies load lazily).

* ``_hf``: ``hf-auto``, ``phikon``, ``phikon-v2`` from ``save_pretrained`` directories.
* ``_onnx``: ``onnx`` files run with onnxruntime; export of any encoder to ONNX.
* ``_torchscript``: ``torchscript`` archives; export of any encoder by tracing.
* ``_timm``: ``uni``, ``uni2-h``, ``virchow2``, ``h-optimus-0``, ``h-optimus-1``,
  ``prov-gigapath`` built with timm from local weight files.
"""

from histoguard.encoders import _hf, _onnx, _timm, _torchscript  # noqa: F401
