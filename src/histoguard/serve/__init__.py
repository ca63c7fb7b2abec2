"""The slide server and viewer: DeepZoom tiles over histoguard's readers, overlay layers of a
prediction (attention, class probability, tile uncertainty, conformal-set size, abstention, the
OOD verdict), QuPath GeoJSON, and predictions on request, served to an OpenSeadragon viewer.

Needs the ``serve`` extra (``pip install histoguard[serve]``: Starlette and uvicorn).
"""

from histoguard.serve._app import create_app
from histoguard.serve._config import ServeConfig
from histoguard.serve._deepzoom import DeepZoomGeometry
from histoguard.serve._server import serve

__all__ = ["DeepZoomGeometry", "ServeConfig", "create_app", "serve"]
