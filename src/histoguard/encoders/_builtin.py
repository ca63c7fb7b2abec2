"""The built-in encoders, registered by importing their modules.

* ``hg-cnn`` (:mod:`._cnn`): a compact CNN to train from scratch.
* ``hg-d4`` (:mod:`._d4`): a CNN exactly invariant to 90° rotations and flips.
* ``hg-handcrafted`` (:mod:`._handcrafted`): colour, stain and texture statistics.
"""

from histoguard.encoders import _cnn, _d4, _handcrafted

__all__ = ["_cnn", "_d4", "_handcrafted"]
