"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions (JSON or server-sent events),
/v1/images/generations and /v1/images/edits, plus /health.

`create_app(model, limits)` gives the FastAPI app around one loaded GenLlava; `genllava serve`
runs it under uvicorn (server.py), tests and benchmarks can run it in-process."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data import templates
from ..data.conversation import Message, user
from .batching import Batcher, Job, QueueFull, ShuttingDown
from .convert import check_text, clean_text, task_of, to_conversation
from .errors import APIError, bad_request, error_body
from .limits import Limits
from .media import decode_image_bytes, to_b64_png, to_data_url
from .schemas import ChatCompletionRequest, ImageGenerationRequest, image_part

log = logging.getLogger("genllava.serve")
IMAGE_FIELDS = ("image", "image[]")


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimit:
    """413 for a body over the limit: at once from Content-Length, else while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = error_body(413, f"the request body is over the limit of {self.max_bytes} bytes", None,
                              "request_too_large") if length.isdigit() else error_body(400, "bad Content-Length")
            return await JSONResponse(body, status_code=413 if length.isdigit() else 400)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, counted, send)


def _param(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def create_app(model, limits: Limits | None = None, api_key: str | None = None, model_name: str | None = None,
               batcher: Batcher | None = None) -> FastAPI:
    limits = (limits or Limits()).check()
    name = model_name or "genllava"
    created = int(time.time())
    batcher = batcher or Batcher(model, limits.max_queue, limits.max_batch, limits.batch_wait_ms)
    max_prompt = min(limits.max_prompt_tokens or model.processor.max_length, model.processor.max_length)

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has let the running requests finish; the queue is empty by then, but be sure.
        await asyncio.to_thread(batcher.close, limits.timeout_s)

    app = FastAPI(title="genllava", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.limits, app.state.batcher, app.state.model_name = model, limits, batcher, name
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            given = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                message = ("no API key given: send 'Authorization: Bearer KEY'" if not given
                           else "incorrect API key")
                return JSONResponse(error_body(401, message, None, "invalid_api_key"), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    # ---- errors in OpenAI's shape ---------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err: RequestValidationError):
        errors = err.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": ""}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(400, "the request body is not valid JSON", None, "invalid_json"), 400)
        param = _param(first.get("loc", ()))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(err.status_code)
        message = err.detail if err.status_code != 404 else f"no route {request.method} {request.url.path}"
        status = err.status_code if err.status_code < 500 else 500
        return JSONResponse(error_body(status, str(message), None, code), status_code=status,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, err: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "the server failed on this request; see its log", None,
                                       "internal_error"), status_code=500)

    # ---- shared steps ----------------------------------------------------------------------------
    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise APIError(404, f"the model {requested!r} does not exist; this server serves {name!r}", "model",
                           "model_not_found")

    def check_counts(n: int, steps: int | None) -> None:
        if n > limits.max_n:
            raise bad_request(f"n is {n}, over the limit of {limits.max_n}", "n", "invalid_value")
        if steps is not None and steps > limits.max_steps:
            raise bad_request(f"num_inference_steps is {steps}, over the limit of {limits.max_steps}",
                              "num_inference_steps", "invalid_value")

    def check_prompt(messages: list[Message], task: str | None) -> int:
        characters = sum(len(m.text) for m in messages)
        if characters > 64 * max_prompt:  # no token is longer than 64 characters: too long before tokenizing
            raise bad_request(f"the conversation is {characters} characters, far over the limit of {max_prompt} "
                              "tokens; shorten it or start a new one", "messages", "context_length_exceeded")
        try:
            length = len(model.processor.encode_prompt(messages, task))
        except ValueError:  # over the model's own max_length
            raise bad_request(f"the conversation is over the model's limit of {model.processor.max_length} tokens; "
                              "shorten it or start a new one", "messages", "context_length_exceeded") from None
        if length > max_prompt:
            raise bad_request(f"the conversation is {length} tokens, over the limit of {max_prompt}; shorten it "
                              "or start a new one", "messages", "context_length_exceeded")
        return length

    def options(task, max_tokens, temperature, top_p, guidance, steps, strength) -> dict:
        return {"task": task, "max_new_tokens": max_tokens, "temperature": float(temperature or 0.0),
                "top_p": float(1.0 if top_p is None else top_p), "guidance_scale": guidance, "steps": steps,
                "strength": float(strength)}

    def submit(job: Job) -> tuple[Job, float]:
        try:
            batcher.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy ({limits.max_queue} requests queued); retry in "
                           f"{limits.retry_after_s} s", None, "queue_full",
                           headers={"retry-after": str(limits.retry_after_s)}) from None
        except ShuttingDown:
            raise APIError(503, "the server is shutting down", None, "shutting_down") from None
        return job, time.monotonic() + limits.timeout_s

    async def result(job: Job, deadline: float):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            job.cancelled = True
            raise APIError(504, f"the request did not finish within {limits.timeout_s:g} s", None,
                           "timeout") from None
        except asyncio.CancelledError:
            job.cancelled = True  # the client went away
            raise
        except ValueError as err:  # the model refused this input
            raise bad_request(str(err)) from None

    def new_seed(seed: int | None) -> int:
        return secrets.randbelow(2**31) if seed is None else seed

    # ---- routes ----------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued": batcher.pending, "generate_calls": dict(batcher.stats)}

    def model_card():
        return {"id": name, "object": "model", "created": created, "owned_by": "genllava"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        check_model(body.model)
        n = body.n or 1
        check_counts(n, body.num_inference_steps)
        max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise bad_request(f"max_tokens is {max_tokens}, over the limit of {limits.max_tokens}", "max_tokens",
                              "invalid_value")
        task = task_of(body.task)
        conversation = await asyncio.to_thread(to_conversation, body.messages, limits)
        prompt_tokens = await asyncio.to_thread(check_prompt, conversation.messages, task)
        strength = body.strength if body.strength is not None and conversation.latest is not None else 1.0
        job = Job(conversation.messages, conversation.images, conversation.latest, new_seed(body.seed), n,
                  options(task, max_tokens, body.temperature, body.top_p, body.guidance_scale,
                          body.num_inference_steps, strength))
        words = None
        if body.stream:  # the worker thread hands each reply's new words to this request's event loop
            words, loop = asyncio.Queue(), asyncio.get_running_loop()
            job.on_text = lambda k, delta: loop.call_soon_threadsafe(words.put_nowait, (k, delta))
        job, deadline = submit(job)
        completion_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, words, deadline, completion_id, now, n, prompt_tokens, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        replies = await result(job, deadline)
        choices = []
        for index, reply in enumerate(replies):
            message = {"role": "assistant", "content": reply.text, "refusal": None}
            if reply.image is not None:
                message["images"] = [image_part(to_data_url(reply.image))]
            choices.append({"index": index, "message": message, "finish_reason": reply.finish_reason,
                            "logprobs": None})
        return {"id": completion_id, "object": "chat.completion", "created": now, "model": name,
                "system_fingerprint": None, "choices": choices, "usage": usage_of(prompt_tokens, replies)}

    def usage_of(prompt_tokens: int, replies) -> dict:
        completion = sum(r.completion_tokens for r in replies)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    async def stream(job, words, deadline, completion_id, now, n, prompt_tokens, include_usage):
        """Server-sent events: each reply's words as the model writes them, then its image (if any)
        and finish reason, the usage when asked, and [DONE]."""
        def event(choices, **extra) -> str:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": now, "model": name,
                     "system_fingerprint": None, "choices": choices, **extra}
            return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"

        def text(index: int, piece: str) -> str:
            return event([{"index": index, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}])

        loop = asyncio.get_running_loop()
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(words.put_nowait, None))
        sent = [""] * n
        try:
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                          "logprobs": None} for i in range(n)])
            try:
                while (item := await asyncio.wait_for(words.get(), max(0.0, deadline - time.monotonic()))) is not None:
                    index, piece = item
                    sent[index] += piece
                    yield text(index, piece)
                replies = await result(job, deadline)
            except (APIError, asyncio.TimeoutError) as err:
                if isinstance(err, asyncio.TimeoutError):
                    job.cancelled = True
                    err = APIError(504, f"the request did not finish within {limits.timeout_s:g} s", None, "timeout")
                yield f"data: {json.dumps(err.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            for index, reply in enumerate(replies):
                rest = reply.text[len(sent[index]):] if reply.text.startswith(sent[index]) else ""
                if rest:
                    yield text(index, rest)
                delta = {}
                if reply.image is not None:
                    delta["images"] = [image_part(to_data_url(reply.image))]
                yield event([{"index": index, "delta": delta, "finish_reason": reply.finish_reason,
                              "logprobs": None}])
            if include_usage:
                yield event([], usage=usage_of(prompt_tokens, replies))
            yield "data: [DONE]\n\n"
        finally:
            if not job.future.done():
                job.cancelled = True

    def parse_size(size: str | None) -> tuple[int, int] | None:
        if size in (None, "", "auto"):
            return None
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise bad_request(f"size must be WIDTHxHEIGHT (e.g. 512x512) or auto, got {size!r}", "size",
                              "invalid_value") from None
        if not (1 <= width <= 4096 and 1 <= height <= 4096) or width * height > limits.max_image_pixels:
            raise bad_request(f"size {size} is out of range (1..4096 per side, at most {limits.max_image_pixels} "
                              "pixels)", "size", "invalid_value")
        return width, height

    def images_response(replies, size, response_format: str | None, masks=None) -> dict:
        data, shown = [], None
        for reply in replies:
            image = reply.image
            if size is not None and image.size != size:
                image = image.resize(size, Image.BICUBIC)
            if masks is not None:
                image = masks(image)
            shown = image.size
            item = {"revised_prompt": reply.text or None}
            if response_format == "url":
                item["url"] = to_data_url(image)
            else:
                item["b64_json"] = to_b64_png(image)
            data.append(item)
        return {"created": int(time.time()), "data": data, "output_format": "png",
                "size": f"{shown[0]}x{shown[1]}" if shown else None}

    async def draw(messages, images, init, seed, n, body_like) -> list:
        await asyncio.to_thread(check_prompt, messages, templates.T2I)
        strength = body_like.get("strength")
        job = Job(messages, images, init, new_seed(seed), n,
                  options(templates.T2I, limits.default_max_tokens, 0.0, None, body_like.get("guidance_scale"),
                          body_like.get("num_inference_steps"),
                          strength if strength is not None and init is not None else 1.0))
        return await result(*submit(job))

    @app.post("/v1/images/generations")
    async def images_generations(body: ImageGenerationRequest):
        check_model(body.model)
        n = body.n or 1
        check_counts(n, body.num_inference_steps)
        prompt = clean_text(body.prompt).strip()
        if not prompt:
            raise bad_request("prompt is empty; say what the image should show", "prompt", "empty_message")
        check_text(prompt, "prompt")
        size = parse_size(body.size)
        replies = await draw([user(prompt)], [], None, body.seed, n,
                             {"guidance_scale": body.guidance_scale, "num_inference_steps": body.num_inference_steps})
        return images_response(replies, size, body.response_format)

    @app.post("/v1/images/edits")
    async def images_edits(request: Request):
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise APIError(415, "send /v1/images/edits as multipart/form-data (image, prompt, ...)", None,
                           "unsupported_media_type")
        try:
            form = await request.form(max_files=limits.max_images + 1, max_fields=64)
        except StarletteHTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - a malformed multipart body is the client's
            raise bad_request(f"the multipart body cannot be read ({type(err).__name__})", None,
                              "invalid_multipart") from None
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = [v for k, v in form.multi_items() if k in IMAGE_FIELDS and not isinstance(v, str)]
        mask_file = form.get("mask")

        def number(key, kind, low=None, high=None):
            if key not in fields or fields[key] == "":
                return None
            try:
                value = kind(fields[key])
            except ValueError:
                raise bad_request(f"{key} must be a number, got {fields[key]!r}", key, "invalid_value") from None
            if (low is not None and value < low) or (high is not None and value > high):
                raise bad_request(f"{key} is {value}, outside {low}..{high}", key, "invalid_value")
            return value

        check_model(fields.get("model") or None)
        n = number("n", int, 1) or 1
        steps = number("num_inference_steps", int, 1)
        check_counts(n, steps)
        strength = number("strength", float, 0.0, 1.0)
        if strength == 0.0:
            raise bad_request("strength must be in (0, 1]", "strength", "invalid_value")
        guidance = number("guidance_scale", float, 0.0, 50.0)
        seed = number("seed", int, 0, 2**63 - 1)
        response_format = fields.get("response_format") or None
        if response_format not in (None, "b64_json", "url"):
            raise bad_request("response_format must be b64_json or url", "response_format", "invalid_value")
        prompt = clean_text(fields.get("prompt") or "").strip()
        if not prompt:
            raise bad_request("prompt is empty; say how to change the image", "prompt", "empty_message")
        check_text(prompt, "prompt")
        if not uploads:
            raise bad_request("no image: send the image to edit as the multipart file field 'image'", "image",
                              "missing_image")
        if len(uploads) > 1:
            raise bad_request(f"{len(uploads)} images sent; this model edits one image per request", "image",
                              "too_many_images")
        size = parse_size(fields.get("size"))

        async def read(upload, param):
            data = await upload.read(limits.max_image_bytes + 1)
            return await asyncio.to_thread(decode_image_bytes, data, limits, param)

        image = await read(uploads[0], "image")
        mask = await read(mask_file, "mask") if mask_file is not None and not isinstance(mask_file, str) else None
        if mask_file is not None and mask is None:
            raise bad_request("mask must be an image file", "mask", "invalid_image")
        masks = None
        if mask is not None:
            alpha = _mask_alpha(mask_file)

            def masks(drawn: Image.Image) -> Image.Image:
                # OpenAI's mask: transparent where the image may change, opaque where it stays.
                keep = alpha.resize(drawn.size, Image.NEAREST)
                return Image.composite(image.resize(drawn.size, Image.BICUBIC), drawn, keep)

        replies = await draw([user(prompt, has_image=True)], [image], image, seed, n,
                             {"guidance_scale": guidance, "num_inference_steps": steps, "strength": strength})
        return images_response(replies, size, response_format, masks)

    def _mask_alpha(upload) -> Image.Image:
        upload.file.seek(0)
        with Image.open(upload.file) as raw:
            raw.load()
            return raw.getchannel("A") if "A" in raw.getbands() else raw.convert("L")

    return app


def served_name(model_dir: str | Path) -> str:
    return Path(model_dir).resolve().name
