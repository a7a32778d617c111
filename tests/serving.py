"""Helpers for the serving tests: a saved shapes model, a live `genllava serve` subprocess on
127.0.0.1, images as data URLs."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

API_KEY = "test-key-123"


def build_shapes_model(folder: Path) -> Path:
    """The shapes preset's GenLLaVA (shipped pretrained parts, fresh projector and head) saved as a
    model folder, as `genllava train --preset shapes` writes one. Untrained glue: its answers are
    not right, but they are deterministic, which the round-trip tests need."""
    from genllava import presets
    from genllava.model.modeling import GenLlava

    torch.manual_seed(0)
    config, _ = presets.preset("shapes")
    GenLlava.build(config).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
    """Asks a server subprocess to stop (SIGTERM: a graceful shutdown), kills it after `timeout` s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LiveServer:
    def __init__(self, model_dir: Path, *flags: str, api_key: str | None = API_KEY, log: Path | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        command = [sys.executable, "-m", "genllava", "serve", "--model", str(model_dir), "--port", str(self.port),
                   "--model-name", "shapes", "--log-level", "warning", *flags]
        if api_key:
            command += ["--api-key", api_key]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        env.pop("GENLLAVA_API_KEY", None)
        self.log = log
        self._log_file = open(log, "wb") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> "LiveServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"genllava serve exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"genllava serve did not answer /health within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else ""

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        stop_process(self.process, sig, timeout)
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()
        return self.process.returncode


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def image_from_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def image_from_b64(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


@contextlib.contextmanager
def threads(count: int):
    """The server runs with one torch thread; direct calls compared with it bit for bit do too."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
