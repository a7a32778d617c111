"""`genllava serve`: load the model once, run the app under uvicorn.

The model's work (the batching worker) runs in the main thread, the one that loaded the model, and
uvicorn in a second thread: on a CPU, torch runs a second thread's ops at about half speed
(docs/findings/2026-11-30-serving-speed.md).

SIGINT/SIGTERM stop accepting connections, let the running and queued requests finish (up to the
request timeout), then stop the batching worker and exit 0."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from .limits import Limits


def serve(model, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: Limits | None = None, model_name: str = "genllava", log_level: str = "info") -> None:
    import uvicorn

    from .api import create_app
    from .batching import Batcher

    limits = (limits or Limits()).check()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    batcher = Batcher(model, limits.max_queue, limits.max_batch, limits.batch_wait_ms, own_thread=False)
    app = create_app(model, limits, api_key=api_key, model_name=model_name, batcher=batcher)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=int(limits.timeout_s) + 5,
                            # a little over the body limit: uvicorn's own cap on one HTTP event
                            h11_max_incomplete_event_size=max(64 * 1024, limits.max_body_bytes + 1024))
    server = uvicorn.Server(config)

    def run_http() -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn could not start (the port is taken, ...); it logged why
            pass
        finally:
            batcher.close(limits.timeout_s)  # also when uvicorn stops on its own: the main thread goes on

    # Outside the main thread uvicorn leaves signals alone: its own handler, installed here, asks it
    # to shut down gracefully (a second Ctrl-C forces it).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    http = threading.Thread(target=run_http, name="uvicorn")

    def announce() -> None:  # once it listens: a port already taken gets uvicorn's error instead
        while http.is_alive() and not server.started:
            time.sleep(0.05)
        if server.started:
            print(f"genllava serve: model {model_name!r} on http://{host}:{port}/v1 "
                  f"({'API key required' if api_key else 'no API key'})", flush=True)

    http.start()
    threading.Thread(target=announce, daemon=True).start()
    batcher.run()  # until uvicorn's shutdown closes it
    http.join()
    if not server.started:
        sys.exit(1)
