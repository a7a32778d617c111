"""`genllava serve`: load the model once, run the app under uvicorn.

SIGINT/SIGTERM stop accepting connections, let the running and queued requests finish (up to the
request timeout), then stop the batching worker and exit."""

from __future__ import annotations

import logging
import signal
import sys

from .limits import Limits


def serve(model, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: Limits | None = None, model_name: str = "genllava", log_level: str = "info") -> None:
    import uvicorn

    from .api import create_app

    limits = (limits or Limits()).check()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    app = create_app(model, limits, api_key=api_key, model_name=model_name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=int(limits.timeout_s) + 5,
                            # a little over the body limit: uvicorn's own cap on one HTTP event
                            h11_max_incomplete_event_size=max(64 * 1024, limits.max_body_bytes + 1024))
    print(f"genllava serve: model {model_name!r} on http://{host}:{port}/v1 "
          f"({'API key required' if api_key else 'no API key'})", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found
    # installed: let that be a clean exit (status 0), not death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
