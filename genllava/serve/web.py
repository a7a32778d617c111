"""`genllava web`: a chat page (Gradio) where a person uploads an image and asks about it, asks for
an image and sees it inline, and edits the last image in follow-up turns.

The page holds the conversation; each turn rebuilds the model's history from it, as the OpenAI API
does from the messages a client sends back, so Gradio's retry, undo and edit buttons stay right.
An uploaded image starts a new conversation about it (as `/image` does in `genllava chat`); an edit
starts from the conversation's latest image. It runs offline: no analytics or version check, no
share link unless asked for, fonts served by the app itself.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from ..data.conversation import ASSISTANT, USER, Message  # noqa: E402
from ..data.images import load_image  # noqa: E402
from ..data.templates import I2T, T2I  # noqa: E402

# Small images (the shapes world draws 32x32) are shown enlarged, with their pixels kept sharp.
CSS = "[data-testid=bot] img { min-width: 192px; height: auto; object-fit: contain; image-rendering: pixelated; }"
ANSWERS = {"auto (the model chooses)": None, "text": I2T, "image": T2I}


def turns(history: list[dict], message: dict) -> list[tuple[str, str, list[str]]]:
    """(role, text, file paths) per turn of the page's conversation, the new message last. Gradio
    gives each message's content as parts ({"type": "text"} or {"type": "file"}); consecutive
    messages of one role are one turn."""
    out: list[tuple[str, str, list[str]]] = []
    for role, content in [(m["role"], m["content"]) for m in history] + [(USER, [message])]:
        texts, files = [], []
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, str):
                texts.append(part)
            elif part.get("type") == "text" or "text" in part:
                texts.append(part.get("text") or "")
                files += [f if isinstance(f, str) else f["path"] for f in part.get("files", [])]
            elif part.get("type") == "file":
                files.append(part["file"]["path"])
        if out and out[-1][0] == role:
            out[-1] = (role, " ".join(t for t in (out[-1][1], *texts) if t), out[-1][2] + files)
        else:
            out.append((role, " ".join(t for t in texts if t), files))
    return out


def conversation(history: list[dict], message: dict) -> tuple[list[Message], Image.Image | None, Image.Image | None]:
    """The model's view of the page: its messages, the input image, and the latest image (input or
    answer) that an edit starts from. The conversation starts at the last uploaded image."""
    all_turns = turns(history, message)
    start = max((i for i, (role, _, files) in enumerate(all_turns) if role == USER and files), default=0)
    messages, image, latest = [], None, None
    for i, (role, text, files) in enumerate(all_turns[start:]):
        if role == USER:
            if files and i == 0:
                image = latest = load_image(files[-1])
            messages.append(Message(USER, text, has_image=bool(files) and i == 0))
        else:
            if files:
                latest = load_image(files[-1])
            messages.append(Message(ASSISTANT, text, task=T2I if files else I2T, image_answer=bool(files)))
    return messages, image, latest


def respond(model, out_dir: Path, message: dict, history: list[dict], answer: str, seed: float,
            guidance: float, steps: float, strength: float) -> dict | str:
    """One turn: the reply's words, and the image it drew (saved under out_dir) if any."""
    import gradio as gr

    if not (message.get("text") or "").strip():
        raise gr.Error("Type a question, a request for an image, or how to change the last one.")
    try:
        messages, image, latest = conversation(history, {**message, "text": message["text"].strip()})
        reply = model.generate([messages], [image], task=ANSWERS.get(answer), seed=int(seed or 0) + len(messages) - 1,
                               guidance_scale=float(guidance), steps=int(steps),
                               strength=float(strength) if latest is not None else 1.0, init_images=[latest])[0]
    except ValueError as err:  # a bad image, an overlong conversation: the user's to fix
        raise gr.Error(str(err)) from None
    if reply.image is None:
        return reply.text
    path = out_dir / f"{uuid.uuid4().hex}.png"
    reply.image.save(path)
    return {"text": reply.text, "files": [str(path)]}


def build_app(model, out_dir: str | Path):
    """The Gradio app (a gr.ChatInterface) for a loaded GenLlava; drawn images are saved in out_dir."""
    import gradio as gr

    out, config, one_at_a_time = Path(out_dir), model.config, threading.Lock()  # one model copy

    def fn(message, history, answer, seed, guidance, steps, strength):
        with one_at_a_time:
            return respond(model, out, message, history, answer, seed, guidance, steps, strength)

    app = gr.ChatInterface(
        fn, multimodal=True, analytics_enabled=False, title="GenLLaVA",
        description="Upload an image and ask about it, ask for an image, or ask to change the last image.",
        textbox=gr.MultimodalTextbox(file_types=["image"], sources=["upload"],
                                     placeholder="Ask about an image (📎 to upload), ask for one, or edit the last one"),
        chatbot=gr.Chatbot(label="GenLLaVA", height="60vh", min_height=400),
        additional_inputs=[
            gr.Radio(list(ANSWERS), value=next(iter(ANSWERS)), label="Answer with"),
            gr.Number(0, label="Seed", precision=0),
            gr.Slider(0.0, 15.0, value=config.guidance_scale, step=0.5, label="Guidance scale"),
            gr.Slider(1, 100, value=config.inference_steps, step=1, label="Sampling steps"),
            gr.Slider(0.05, 1.0, value=1.0, step=0.05,
                      label="Edit strength (below 1 keeps more of the last image; 1 redraws)"),
        ],
        additional_inputs_accordion=gr.Accordion("Image settings", open=False),
        concurrency_limit=1,  # one model copy: turns run one at a time
    )
    return app


def serve_web(model, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="genllava-web-") as out:  # the drawn images, removed at exit
        build_app(model, out).queue(max_size=64).launch(
            server_name=host, server_port=port, share=share, ssr_mode=False, mcp_server=False, allowed_paths=[out],
            footer_links=["settings"], css=CSS)
