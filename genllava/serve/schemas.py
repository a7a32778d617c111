"""Request and response bodies in OpenAI's shapes (chat completions, images), with genllava's
extensions as top-level fields (what an OpenAI client sends through `extra_body`).

Unknown OpenAI parameters (`user`, `presence_penalty`, ...) are accepted and ignored, as clients
send them by default; the values genllava reads are checked here, their limits in api.py."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Union[TextPart, ImagePart]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    images: list[ImagePart] | None = None  # an assistant's image answer, as this server returns it
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class Extensions(_Open):
    """genllava's own fields (send them with the OpenAI client's extra_body)."""
    task: Literal["auto", "image", "text", "[T2I]", "[I2T]"] | None = None
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    num_inference_steps: int | None = Field(None, ge=1)
    strength: float | None = Field(None, gt=0.0, le=1.0)


class ChatCompletionRequest(Extensions):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ImageGenerationRequest(Extensions):
    prompt: str
    model: str | None = None
    n: int | None = Field(None, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    quality: str | None = None
    style: str | None = None


# ---- responses --------------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def image_part(data_url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url}}
