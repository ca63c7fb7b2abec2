"""Running the slide server with uvicorn."""

from __future__ import annotations

import logging

from histoguard.serve._app import create_app
from histoguard.serve._config import ServeConfig

logger = logging.getLogger(__name__)


def serve(config: ServeConfig) -> None:
    """Serve slides, their predictions and the viewer until interrupted.

    Open ``http://HOST:PORT/`` in a browser for the viewer. Binds to ``config.host``
    (loopback by default: the server has no authentication, so expose it only behind one).

    Args:
        config: what to serve and where.

    Raises:
        ConfigError: a folder that does not exist, or a predictions folder that is not one.
    """
    import uvicorn

    app = create_app(config)
    n = len(app.state.histoguard.slides)
    logger.info("serving %d slides at http://%s:%d/", n, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
