"""GenLlava: the composite model of the paper.

    image -> VisionTower (frozen, penultimate layer) -> Projector -> LLM <- text
    [IMG] positions: word embedding e + last hidden state h -> GenerationHead -> U (L x d_cross)
    U -> frozen DiffusionDecoder (UNet cross-attention, VAE, scheduler, classifier-free guidance)

Convention for the head's input (paper eq. 2), identical in training and inference: for each
[IMGi] token *in the input sequence*, e is its input embedding and h is the LLM's final hidden
state (hidden_states[-1], after the final norm) at that same position. Inference appends
[IMG0..15][EOI] after a generated [SOI] and runs one forward pass, so both paths read the same
positions of the same sequence.

Classifier-free guidance: the unconditional branch is the decoder's own empty-prompt embedding
(as SD's negative prompt ""), so training needs no condition dropout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, AutoImageProcessor

from ..data import templates
from ..data.conversation import ASSISTANT, Message
from .config import CONFIG_NAME, GenLlavaConfig
from .decoder import DiffusionDecoder
from .generation_head import GenerationHead
from .loading import check_complete, loading, resolve
from .processor import PROCESSOR_CONFIG, GenLlavaProcessor
from .projector import Projector
from .streaming import RowTextStreamer
from .vision import VisionTower

WEIGHTS_NAME = "model.safetensors"  # projector + generation head
LANGUAGE_MODEL_DIR = "language_model"


@dataclass
class Reply:
    text: str
    task: str  # "[T2I]" or "[I2T]"
    image: Image.Image | None = None
    prompt_tokens: int = 0  # the prompt's length in tokens
    completion_tokens: int = 0  # tokens generated (the stop token included)
    finish_reason: str = "stop"  # "length" when max_new_tokens ran out before a stop token

    def as_message(self) -> Message:
        """This reply as a turn of the history: its words and, for an image, the image answer
        (whose [IMG] tokens the processor writes back)."""
        return Message(ASSISTANT, self.text, task=self.task, image_answer=self.image is not None)


def align_loss(conditioning: torch.Tensor, target: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """GILL-style auxiliary loss: MSE to the decoder's own caption embedding over all L positions,
    plus the same over the caption's own token positions (`words` marks them).

    A caption fills a small part of SD's 77 positions, so the plain mean is mostly the padding's
    fit; the second term keeps the words, which carry the content, from being averaged away
    (docs/findings/2026-11-27-shapes-recipe.md)."""
    error = (conditioning.float() - target.float()).pow(2).mean(-1)  # fp32 whatever the head/encoder hold
    return error.mean() + (error * words).sum() / words.sum().clamp(min=1)


@torch.no_grad()
def start_task_tokens_as_answer_start(language_model, processor: GenLlavaProcessor) -> None:
    """[I2T] and [T2I] sit where a pretrained chat LM starts its answer, right after "ASSISTANT:".
    Their input rows start as copies of that prefix's last token, so the position after them reads
    like the one the LM answered from, and it keeps answering instead of relearning to
    (`resize_token_embeddings`' mean rows lose that at first; docs/findings/2026-11-27-shapes-recipe.md)."""
    rows = language_model.get_input_embeddings().weight
    for task_id in processor.task_ids.values():
        rows[task_id] = rows[processor.assistant_prefix_ids[-1]]


def turn_end(processor: GenLlavaProcessor, new: list[int], cut: int) -> int:
    """Where the assistant's turn ends in new[:cut]: before the first role marker ("USER:",
    "ASSISTANT:") the model wrote itself, as when it goes on to imagine the next turn; else `cut`."""
    def decode(ids: list[int]) -> str:
        return processor.tokenizer.decode(ids, skip_special_tokens=True)

    text = decode(new[:cut])
    found = [i for i in (text.find(m) for m in (templates.USER_PREFIX, templates.ASSISTANT_PREFIX)) if i >= 0]
    if not found:
        return cut
    k = 0
    while k < cut and len(decode(new[:k + 1])) <= min(found):  # the tokens wholly before the marker
        k += 1
    return k


class GenLlava(nn.Module):
    def __init__(self, config: GenLlavaConfig, vision: VisionTower, language_model, processor: GenLlavaProcessor,
                 decoder: DiffusionDecoder):
        super().__init__()
        self.config, self.processor = config, processor
        self.vision, self.language_model, self.decoder = vision, language_model, decoder.freeze()
        width = language_model.config.hidden_size
        self.projector = Projector(vision.width, width)
        self.generation_head = GenerationHead(config.head, width, decoder.cross_attention_dim, config.num_img_tokens)
        # The unconditional branch of classifier-free guidance, as SD's negative prompt "".
        self.register_buffer("negative_conditioning", decoder.encode_prompt([""]).detach(), persistent=False)
        self.img_token_ids = torch.tensor(processor.img_token_ids)
        # FSDP wraps (and shards) the LM's decoder layers one by one, as it would the LM alone.
        self._no_split_modules = list(getattr(language_model, "_no_split_modules", None) or [])

    # ---- construction and persistence -------------------------------------------------------------
    @classmethod
    def build(cls, config: GenLlavaConfig, max_length: int | None = None,
              dtype: torch.dtype | None = None) -> "GenLlava":
        """A fresh GenLLaVA from pretrained parts: base LM + tokenizer, vision tower, decoder.

        `dtype` (e.g. torch.bfloat16) loads the frozen parts, vision tower and decoder, in that dtype
        (transformers 5 takes it as `dtype=`, diffusers as `torch_dtype=`); the LM keeps what its
        from_pretrained gives and the projector and head start in fp32. Train under torch.autocast.
        """
        frozen = {} if dtype is None else {"dtype": dtype}
        config.vision_tower, config.language_model, config.decoder = (
            resolve(config.vision_tower), resolve(config.language_model), resolve(config.decoder))
        with loading("the vision tower", config.vision_tower):
            vision = VisionTower.from_pretrained(config.vision_tower, config.vision_feature_layer, **frozen)
            image_processor = AutoImageProcessor.from_pretrained(config.vision_tower)
        with loading("the language model", config.language_model):
            tokenizer = AutoTokenizer.from_pretrained(config.language_model)
            language_model = AutoModelForCausalLM.from_pretrained(config.language_model)
        GenLlavaProcessor.add_genllava_tokens(tokenizer)
        language_model.resize_token_embeddings(len(tokenizer))
        with loading("the image decoder", config.decoder):
            decoder = DiffusionDecoder.from_pretrained(config.decoder, **frozen)
        processor = GenLlavaProcessor(tokenizer, image_processor, vision.num_patches, max_length or config.max_length)
        start_task_tokens_as_answer_start(language_model, processor)
        return cls(config, vision, language_model, processor, decoder)

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                        is_main_process: bool = True) -> None:
        """Writes the model folder: config, LM (full weights in language_model/, or the peft adapter in
        language_model_adapter/ for a LoRA model), projector + head in model.safetensors, processor.

        `state_dict` is the whole model's gathered state dict (accelerate's get_state_dict under
        ZeRO-3/FSDP, where this module's own parameters are empty shards); the files are then written
        from it. Frozen parts (vision., decoder.) are named by the config and never written. Built in
        FOLDER.partial and renamed, so a failed save leaves any previous folder as it was."""
        if not is_main_process:
            return
        import shutil

        folder = Path(folder)
        partial = folder.with_name(folder.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            self._write_folder(partial, state_dict)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if folder.exists():  # swap only now that the new folder is complete
            old = folder.with_name(folder.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            folder.rename(old)
            partial.rename(folder)
            shutil.rmtree(old)
        else:
            partial.rename(folder)

    def _write_folder(self, folder: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        from ..train.lora import ADAPTER_DIR, is_lora

        self.config.save(folder)
        lm_state = None
        if state_dict is not None:
            lm_state = {k[len("language_model."):]: v for k, v in state_dict.items() if k.startswith("language_model.")}
            own = {k: v for k, v in state_dict.items() if k.startswith(("projector.", "generation_head."))}
        else:
            own = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
            own |= {f"generation_head.{k}": v for k, v in self.generation_head.state_dict().items()}
        expected = {f"{part}.{k}" for part in ("projector", "generation_head") for k in getattr(self, part).state_dict()}
        if set(own) != expected:
            raise ValueError(f"state_dict lacks {sorted(expected - set(own))[:3]} or has unexpected "
                             f"{sorted(set(own) - expected)[:3]} projector/generation_head keys")
        if is_lora(self):
            # Adapter + the added tokens' rows only; the full embedding matrices are the base LM's
            # plus those rows, so they are not saved (save_embedding_layers=False).
            self.language_model.save_pretrained(folder / ADAPTER_DIR, state_dict=lm_state, save_embedding_layers=False)
            (folder / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # peft's blank model card
        else:
            self.language_model.save_pretrained(folder / LANGUAGE_MODEL_DIR, state_dict=lm_state)
        save_file({k: v.detach().contiguous().cpu() for k, v in own.items()}, str(folder / WEIGHTS_NAME))
        self.processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, is_trainable: bool = False, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, quantization: str | None = None) -> "GenLlava":
        """Loads a model folder. A LoRA folder (language_model_adapter/) loads the base LM named by
        config.language_model, resizes it to the saved tokenizer and wraps it with the adapter
        (frozen, for inference; `is_trainable=True` to go on training it).

        `device` ("auto", "cpu", "cuda", "cuda:1", a torch.device) and `dtype` ("auto", "bfloat16",
        "float16", "float32", a torch.dtype) say where and in what precision every part runs; "auto"
        picks the GPU and bf16 (fp16 where bf16 is unsupported) when there is one, else the CPU in
        fp32. None leaves a part as its from_pretrained gives it, on the CPU (as before these options).
        `quantization` "8bit" or "4bit" loads the LM through bitsandbytes on a CUDA GPU (low memory)."""
        from ..train.lora import ADAPTER_DIR
        from .device import quantization_config, resolve_device, resolve_dtype

        folder = Path(folder)
        lm_files = f"{ADAPTER_DIR}/adapter_config.json" if (folder / ADAPTER_DIR).is_dir() else f"{LANGUAGE_MODEL_DIR}/config.json"
        check_complete(folder, [CONFIG_NAME, WEIGHTS_NAME, PROCESSOR_CONFIG, lm_files])
        with loading("the model config", str(folder.resolve() / CONFIG_NAME)):
            config = GenLlavaConfig.load(folder)
        target = None if device is None and dtype is None and quantization is None else resolve_device(device)
        dtype = None if target is None else resolve_dtype(dtype, target)
        weights = {} if dtype is None else {"dtype": dtype}
        quantized = quantization_config(quantization, target, dtype or torch.float32) if quantization else None
        lm_options = dict(weights)
        if target is not None and target.type == "cuda":  # straight onto the GPU, not through CPU memory
            lm_options["device_map"] = {"": str(target)}
        if quantized is not None:
            lm_options["quantization_config"] = quantized
        with loading("the vision tower", config.vision_tower):
            vision = VisionTower.from_pretrained(config.vision_tower, config.vision_feature_layer, **weights)
        if (folder / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            with loading("the base language model", config.language_model):
                processor = GenLlavaProcessor.from_pretrained(folder)
                language_model = AutoModelForCausalLM.from_pretrained(config.language_model, **lm_options)
            language_model.resize_token_embeddings(len(processor.tokenizer))  # the added rows come from the adapter
            with loading("the language model's LoRA adapter", str(folder / ADAPTER_DIR)):
                language_model = PeftModel.from_pretrained(language_model, folder / ADAPTER_DIR, is_trainable=is_trainable)
        else:
            with loading("the trained language model", str(folder / LANGUAGE_MODEL_DIR)):
                language_model = AutoModelForCausalLM.from_pretrained(folder / LANGUAGE_MODEL_DIR, **lm_options)
                processor = GenLlavaProcessor.from_pretrained(folder)
        with loading("the image decoder", config.decoder):
            decoder = DiffusionDecoder.from_pretrained(config.decoder, dtype=dtype)
        model = cls(config, vision, language_model, processor, decoder)
        with loading("the projector and generation head", str(folder.resolve() / WEIGHTS_NAME)):
            state = load_file(str(folder / WEIGHTS_NAME))
        model.projector.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        model.generation_head.load_state_dict({k[16:]: v for k, v in state.items() if k.startswith("generation_head.")})
        if quantized is not None:  # the LM is placed and quantized already; bitsandbytes refuses .to()
            for name in ("vision", "projector", "generation_head", "decoder"):
                getattr(model, name).to(target, dtype)
            model.negative_conditioning = model.negative_conditioning.to(target, dtype)
        else:
            if dtype is not None:
                model.to_dtype(dtype)
            if target is not None:
                model.to(target)
        return model.eval()

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """What trains in the single stage: projector, LLM (incl. new token rows), generation head.
        Only parameters that require grad: under LoRA the LM part is the adapters and the added rows."""
        return {name: [p for p in getattr(self, name).parameters() if p.requires_grad]
                for name in ("projector", "language_model", "generation_head")}

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    # ---- precision and memory -------------------------------------------------------------------
    def to_dtype(self, dtype: torch.dtype, frozen_only: bool = False) -> "GenLlava":
        """Casts every part (or only the frozen vision tower and decoder) to `dtype`, e.g. bf16 for
        inference. Modules cast their inputs to their own dtype, so any mix works. Rotary `inv_freq`
        buffers stay as they are, as transformers' from_pretrained(dtype=...) keeps them fp32."""
        for part in (self.vision, self.decoder) if frozen_only else (self,):
            kept = [(m, name, b) for m in part.modules() for name, b in m._buffers.items()
                    if b is not None and name.endswith("inv_freq")]
            part.to(dtype)
            for module, name, buffer in kept:
                module._buffers[name] = buffer
        return self

    def enable_gradient_checkpointing(self) -> "GenLlava":
        """Recompute the LM's and the UNet's activations in the backward pass instead of keeping them.

        diffusers (0.42) checkpoints a block when `torch.is_grad_enabled() and self.gradient_checkpointing`,
        not on `self.training`, and non-reentrant checkpointing needs no input or parameter that
        requires grad, so it takes effect in the frozen UNet, held in eval mode, whose activations
        the diffusion loss backpropagates through into the conditioning. transformers checkpoints
        only in train mode, which the LM is in when it trains.
        """
        lm = self.language_model
        # Newer transformers 5 releases call it activation_checkpointing_enable and deprecate the old name.
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.decoder.unet.enable_gradient_checkpointing()
        return self

    def disable_gradient_checkpointing(self) -> "GenLlava":
        lm = self.language_model
        (getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable)()
        self.decoder.unet.disable_gradient_checkpointing()
        return self

    # ---- forward ------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        return self.embed_features(input_ids, None if pixel_values is None else self.projector(self.vision(pixel_values)))

    def embed_features(self, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Word embeddings with projected patches (images, patches, width) in the image slots."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        slots = input_ids == self.processor.image_token_id
        if features is None:
            if slots.any():
                raise ValueError("the text holds image slots but no image was given")
            return embeds
        if slots.sum() != features.shape[0] * features.shape[1]:
            raise ValueError(f"{int(slots.sum())} image slots for {features.shape[0]} images of {features.shape[1]} patches")
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    def img_states(self, input_ids: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """e + h at every [IMG] position, grouped per image answer: (answers, N, width)."""
        mask = torch.isin(input_ids, self.img_token_ids.to(input_ids.device))
        n = self.config.num_img_tokens
        return (embeds[mask] + hidden[mask]).view(-1, n, embeds.shape[-1])

    def lm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on the labelled (assistant) tokens.

        "sample" reduction averages within each conversation first, so a one-word answer weighs as
        much as an image answer's caption; "token" is the usual flat average, under which long
        answers drown the one-word ones.
        """
        target = labels[:, 1:]
        per_token = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100,
                                                reduction="none")
        counted = (target != -100).sum(1)
        if self.config.lm_loss_reduction == "token":
            return per_token.sum() / counted.sum().clamp(min=1)
        has_labels = counted > 0
        return (per_token.sum(1)[has_labels] / counted[has_labels]).mean()

    def forward(self, input_ids, attention_mask, labels, pixel_values=None, target_pixels=None,
                target_captions: list[str] | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training losses. The autograd graph has the same shape whatever the batch holds: DDP
        (without find_unused_parameters) refuses a module left without gradients, and ZeRO-3/FSDP
        ranks must gather and reduce the same parameters in the same order. A module with nothing to
        do (the projector for a batch without input images, the head for one without image answers)
        runs where it would have run, on zeros, joined to the graph by 0 * its sum: zero gradients,
        the same losses (as LLaVA feeds a blank image to text-only samples)."""
        has_image = pixel_values is not None and pixel_values.shape[0] > 0
        has_target = target_pixels is not None and target_pixels.shape[0] > 0
        if has_image:
            embeds = self.embed(input_ids, pixel_values)
        else:
            first = self.projector[0]
            blank = self.projector(first.weight.new_zeros(1, 1, first.in_features))
            embeds = self.embed_features(input_ids, None)
            embeds = embeds + 0.0 * blank.sum().to(embeds.dtype)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        losses = {"lm_loss": self.lm_loss(out.logits, labels)}
        if not has_target:
            n = self.config.num_img_tokens
            blank = (embeds[:1, :1] + hidden[:1, :1]).expand(1, n, -1) * 0.0
            losses["loss"] = losses["lm_loss"] + 0.0 * self.generation_head(blank).float().sum()
            return losses
        total = losses["lm_loss"]
        conditioning = self.generation_head(self.img_states(input_ids, embeds, hidden))
        with torch.no_grad():
            latents = self.decoder.encode_images(target_pixels)
        losses["diffusion_loss"] = self.decoder.loss(latents, conditioning, generator,
                                                     self.config.diffusion_high_noise_share).mean()
        total = total + self.config.diffusion_loss_weight * losses["diffusion_loss"]
        if self.config.align_loss_weight > 0 and target_captions:
            with torch.no_grad():
                target_conditioning = self.decoder.encode_prompt(target_captions)
            words = self.decoder.prompt_word_mask(target_captions).to(conditioning.device)
            losses["align_loss"] = align_loss(conditioning, target_conditioning, words)
            total = total + self.config.align_loss_weight * losses["align_loss"]
        losses["loss"] = total
        return losses

    @contextlib.contextmanager
    def frozen_parts_apart(self, device=None):
        """Takes the frozen vision tower and decoder out of the module tree while training (forward
        still uses them), so an engine (DDP, DeepSpeed, FSDP) wraps, shards and checkpoints only what
        trains; the frozen parts stay whole on every device, where they run without collectives."""
        parts = {name: self._modules.pop(name) for name in ("vision", "decoder")}
        for name, module in parts.items():
            object.__setattr__(self, name, module.to(device) if device is not None else module)
        try:
            yield self
        finally:
            for name, module in parts.items():
                del self.__dict__[name]
                self._modules[name] = module

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conversations: list[list[Message]], images: list, *,
                 task: str | None = None, max_new_tokens: int = 64, seed: int | list[int] = 0,
                 guidance_scale: float | None = None, steps: int | None = None, strength: float = 1.0,
                 init_images: list[Image.Image | None] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, on_text: Callable[[int, str], None] | None = None) -> list[Reply]:
        """One assistant reply per conversation (batched, left-padded; greedy unless temperature > 0).

        `images[i]` is conversation i's input image (or None), or the list of its user turns' images
        in order (one per user message with has_image). `task` forces "[T2I]" or "[I2T]"; otherwise
        the model decides. `strength` < 1 starts image answers from a noised starting image
        (SDEdit): `init_images[i]`, by default the (last) input image.

        `seed` is one int for the whole batch (its image noise drawn as one batch), or one int per
        conversation: each row then draws its own noise and samples its own words from its own
        seed, so its answer is the same whatever else shares the batch. `temperature` > 0 samples
        the words (with nucleus `top_p`) instead of taking the most likely. `n` replies per
        conversation (returned as conversation 0's n replies, then conversation 1's ...); with a
        list of seeds, sample k of conversation i uses seed[i] + k. `on_text(row, delta)`, when given,
        hears each reply's words as they are written (row: the reply's index in the returned list).
        """
        if len(conversations) != len(images):
            raise ValueError("give one image (or None, or a list of images) per conversation")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
        per_row = isinstance(seed, (list, tuple))
        if per_row and len(seed) != len(conversations):
            raise ValueError(f"{len(seed)} seeds for {len(conversations)} conversations")
        lists = [_as_list(im) for im in images]
        if init_images is None:
            init_images = [given[-1] if given else None for given in lists]
        if n > 1:
            conversations = [c for c in conversations for _ in range(n)]
            lists = [g for g in lists for _ in range(n)]
            init_images = [im for im in init_images for _ in range(n)]
            seed = [s + k for s in seed for k in range(n)] if per_row else seed
        proc = self.processor
        prompts = [proc.encode_prompt(msgs, task) for msgs in conversations]
        for msgs, given in zip(conversations, lists):
            slots = sum(m.has_image for m in msgs if m.role != ASSISTANT)
            if slots != len(given):
                raise ValueError(f"a conversation has {slots} user turn(s) with an image but {len(given)} image(s)")
        ids, mask = proc.pad(prompts, left=True)
        flat = [im for given in lists for im in given]
        pixels = proc.pixel_values(flat).to(self.device) if flat else None
        embeds = self.embed(ids.to(self.device), pixels)
        stop = [proc.eos_id, proc.soi_id]
        # Control tokens that only the code may place ([IMG*] follow [SOI] by construction).
        placed_by_code = [proc.image_token_id, *proc.img_token_ids, proc.eoi_id, *proc.task_ids.values()]
        sampling = {}
        if temperature > 0:
            from transformers import LogitsProcessorList

            rows = seed if per_row else [seed + row for row in range(len(prompts))]
            sampling["logits_processor"] = LogitsProcessorList([RowSampler(rows, temperature, top_p, self.device)])
        if on_text is not None:
            sampling["streamer"] = RowTextStreamer(proc.decode, len(prompts), stop, on_text)
        if task == templates.I2T:  # a text answer was asked for: no image may start
            placed_by_code.append(proc.soi_id)
        elif task is None:  # the model picks the task token itself
            placed_by_code = [t for t in placed_by_code if t not in proc.task_ids.values()]
        out = self.language_model.generate(inputs_embeds=embeds, attention_mask=mask.to(self.device),
                                           max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                           pad_token_id=proc.pad_id, suppress_tokens=placed_by_code, **sampling)
        replies, wants_image = [], []
        for row, prompt in enumerate(prompts):
            new = out[row].tolist()
            cut = next((i for i, t in enumerate(new) if t in stop), len(new))
            cut = turn_end(proc, new, cut)  # a "USER:" / "ASSISTANT:" the model wrote ends its turn
            body = ([proc.task_ids[task]] if task else []) + new[:cut]
            chosen = next((t for t, tid in proc.task_ids.items() if body and body[0] == tid), templates.I2T)
            ends_in_image = cut < len(new) and new[cut] == proc.soi_id
            replies.append(Reply(proc.decode(body), chosen, prompt_tokens=len(prompt),
                                 completion_tokens=min(cut + 1, len(new)),
                                 finish_reason="stop" if cut < len(new) else "length"))
            if ends_in_image or task == templates.T2I:
                wants_image.append((row, prompt + new[:cut] + [proc.soi_id, *proc.img_token_ids, proc.eoi_id]))
        if wants_image:
            self._draw(wants_image, lists, init_images, replies, seed, guidance_scale, steps, strength)
        return replies

    def _draw(self, wants_image, images, init_images, replies, seed, guidance_scale, steps, strength) -> None:
        proc = self.processor
        rows = [row for row, _ in wants_image]
        ids, mask = proc.pad([seq for _, seq in wants_image], left=True)
        ids, mask = ids.to(self.device), mask.to(self.device)
        given = [im for r in rows for im in _as_list(images[r])]
        embeds = self.embed(ids, proc.pixel_values(given).to(self.device) if given else None)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as in training: 0.. from the first real token
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     output_hidden_states=True).hidden_states[-1]
        states = self.img_states(ids, embeds, hidden)
        # A conversation may hold earlier image answers; the new one is each row's last block.
        blocks = torch.isin(ids, self.img_token_ids.to(ids.device)).sum(-1) // self.config.num_img_tokens
        conditioning = self.generation_head(states[blocks.cumsum(0) - 1])
        init = None
        if strength < 1.0:
            if any(init_images[r] is None for r in rows):
                raise ValueError("strength < 1 needs an input image for every conversation that draws")
            init = self.decoder.preprocess([init_images[r] for r in rows])
        if isinstance(seed, (list, tuple)):
            generator = [torch.Generator(self.device).manual_seed(seed[r]) for r in rows]
        else:
            generator = torch.Generator(self.device).manual_seed(seed)
        drawn = self.decoder.sample(conditioning, self.negative_conditioning,
                                    steps=steps or self.config.inference_steps,
                                    guidance_scale=self.config.guidance_scale if guidance_scale is None else guidance_scale,
                                    generator=generator, init_images=init, strength=strength)
        for row, image in zip(rows, drawn):
            replies[row].image = image
            replies[row].task = templates.T2I


def _as_list(images) -> list:
    """A conversation's input images: None, one image, or a list of them, as a list."""
    return [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]


class RowSampler:
    """Samples each row's next token from its own generator (temperature, then nucleus top_p) and
    leaves only that token possible, so greedy search takes it: a row's words depend on its own seed
    and logits only, whatever else shares the batch (generate's do_sample draws a whole batch
    from the global RNG)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.temperature, self.top_p = temperature, top_p
        # Offset from the image noise's seed: words and noise are drawn from different streams.
        self.generators = [torch.Generator(device).manual_seed(s + 0x5EED) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True)
            before = ordered.cumsum(-1) - ordered  # mass of the tokens ranked above each token
            ordered = ordered.masked_fill(before >= self.top_p, 0.0)  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(-1, order, ordered)
        chosen = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)
