"""GenLLaVA as an lmms-eval model: `lmms-eval --model genllava --model_args pretrained=DIR,...`.

lmms-eval (0.7.x) finds the model through the `lmms_eval.models` entry point, which names
`manifest` below: a ModelManifest whose simple class is `GenLlavaLmms`. The class answers with the
model's own pieces (processor.encode_prompt, embed, the language model), never through its image
path: every answer is forced to text with the task token [I2T], as the benchmarks ask for words.

- generate_until: batched (left padding), requests grouped by their gen_kwargs; honours `until`
  (stops a row as soon as its text holds a stop string, and cuts it there), `max_new_tokens`,
  `temperature` (> 0 samples, seeded), `top_p` and `num_beams`.
- loglikelihood: for each (context, continuation), the pair (-log p(continuation | context), is
  greedy). The first element is the negative log-likelihood, summed over the continuation's tokens:
  lmms-eval's multiple-choice scoring takes the argmin, as its own models return their loss. Each
  continuation is encoded as the processor encodes an answer after [I2T] (so " A" and "A" are the
  same answer); is_greedy says whether greedy decoding would produce it.
- generate_until_multi_round: not supported; raises a clear error.

A document with several images gives the model its first (GenLLaVA, as LLaVA-1.5, reads one image
per turn); the plug-in says so once in the log.
"""

from __future__ import annotations

import json
import logging

import torch

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

log = logging.getLogger(__name__)

MODEL_ID = "genllava"
DEFAULT_MAX_NEW_TOKENS = 128
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def manifest():
    """The `lmms_eval.models` entry point's payload."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.GenLlavaLmms")


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


class _StopStrings:
    """A StoppingCriteria: a row is done once its new text holds any of `until` (lmms-eval's stop
    strings, e.g. "\\n\\n" or "Question:")."""

    def __init__(self, tokenizer, until: list[str], prompt_width: int):
        self.tokenizer, self.until, self.start = tokenizer, until, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        # With inputs_embeds, generate's input_ids hold only the new tokens.
        new = input_ids[:, self.start:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return torch.tensor([any(u in t for u in self.until) for t in texts], device=input_ids.device)


def cut_at(text: str, until: list[str]) -> str:
    """The text before the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _as_evaluator_takes(pairs: list[tuple[float, bool]]) -> list:
    """lmms-eval 0.7.3's evaluator passes every response through `unwrap_generation_output`, which
    turns a (logprob, is_greedy) pair into its string, so multiple-choice scoring fails on it. A
    GenerationResult's `text` goes through as it is, so the pairs travel in one where needed."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:  # an lmms-eval without the wrapper takes the pairs themselves
        return pairs
    if unwrap_generation_output((0.0, True))[0] == (0.0, True):
        return pairs
    return [GenerationResult(text=pair) for pair in pairs]


class GenLlavaLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "float32", batch_size: int | str = 1,
                 max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS, seed: int | str = 0, trust_remote_code=None,
                 **kwargs) -> None:
        super().__init__()
        from accelerate import Accelerator

        from ..model.modeling import GenLlava

        if kwargs:
            log.warning("genllava ignores model_args %s", sorted(kwargs))
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: use one of {sorted(DTYPES)}")
        accelerator = Accelerator()
        if accelerator.num_processes > 1:  # `accelerate launch -m lmms_eval ...`: one replica per process
            device = str(accelerator.device)
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self.accelerator = accelerator
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = GenLlava.from_pretrained(pretrained)
        if DTYPES[str(dtype)] != torch.float32:
            model.to_dtype(DTYPES[str(dtype)])
        self.model = model.to(self.device).eval()
        self.processor = model.processor
        self.batch_size = int(batch_size)
        self.max_new_tokens, self.seed = int(max_new_tokens), int(seed)
        self._warned_many_images = False

    # ---- requests -> model inputs -----------------------------------------------------------------
    def _doc_image(self, doc_to_visual, doc_id, task, split):
        if doc_to_visual is None:
            return None
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        visuals = [v for v in visuals if v is not None]
        if len(visuals) > 1 and not self._warned_many_images:
            log.warning("a document of %s has %d images; genllava reads the first", task, len(visuals))
            self._warned_many_images = True
        if visuals and isinstance(visuals[0], str):
            raise ValueError(f"task {task} gives a video or a path ({visuals[0][:60]!r}); genllava takes images")
        return visuals[0] if visuals else None

    def _prompt(self, context: str, has_image: bool) -> list[int]:
        from ..data.conversation import user
        from ..data.templates import I2T

        # "<image>" in a benchmark's context marks where LLaVA puts the image; GenLLaVA's image
        # always opens the turn, and typed "<image>" would be read as text.
        text = context.replace("<image>", "").strip()
        return self.processor.encode_prompt([user(text, has_image=has_image)], I2T)

    def _embed(self, ids: torch.Tensor, images: list) -> torch.Tensor:
        given = [im for im in images if im is not None]
        pixels = self.processor.pixel_values(given).to(self.device) if given else None
        return self.model.embed(ids.to(self.device), pixels)

    # ---- lmms API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        prompts = {}
        for index, request in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = request.args
            image = self._doc_image(doc_to_visual, doc_id, task, split)
            prompts[index] = (self._prompt(context, image is not None), image)
        bar = tqdm(total=len(requests), desc="genllava answering", disable=self.rank != 0)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(prompts[i][0]))  # similar lengths share a batch
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                texts = self._generate([prompts[i] for i in batch], gen_kwargs)
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), text)
                bar.update(len(batch))
        bar.close()
        return results

    def _generate(self, prompts: list[tuple[list[int], object]], gen_kwargs: dict) -> list[str]:
        from transformers import StoppingCriteriaList

        proc = self.processor
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        ids, mask = proc.pad([p for p, _ in prompts], left=True)
        embeds = self._embed(ids, [im for _, im in prompts])
        # Text only: the image path's tokens ([SOI] included) and the control tokens never come.
        suppressed = [proc.image_token_id, *proc.img_token_ids, proc.soi_id, proc.eoi_id, *proc.task_ids.values()]
        options = dict(max_new_tokens=max_new_tokens, eos_token_id=[proc.eos_id], pad_token_id=proc.pad_id,
                       suppress_tokens=suppressed, num_beams=int(gen_kwargs.get("num_beams") or 1))
        if temperature > 0:
            torch.manual_seed(self.seed)
            options.update(do_sample=True, temperature=temperature)
            if gen_kwargs.get("top_p") is not None:
                options["top_p"] = float(gen_kwargs["top_p"])
        else:
            options["do_sample"] = False
        if until:
            options["stopping_criteria"] = StoppingCriteriaList([_StopStrings(proc.tokenizer, until, 0)])
        out = self.model.language_model.generate(inputs_embeds=embeds, attention_mask=mask.to(self.device), **options)
        try:  # a "USER:" / "ASSISTANT:" the model writes itself ends its turn, as in GenLlava.generate
            from ..model.modeling import turn_end
        except ImportError:
            turn_end = None
        texts = []
        for row in out.tolist():
            cut = next((i for i, t in enumerate(row) if t == proc.eos_id), len(row))
            cut = turn_end(proc, row, cut) if turn_end else cut
            texts.append(cut_at(proc.decode(row[:cut]), until).strip())
        return texts

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        items = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if not isinstance(continuation, str):  # a callable doc_to_target
                continuation = continuation(self.task_dict[task][split][doc_id])
            image = self._doc_image(doc_to_visual, doc_id, task, split)
            prompt = self._prompt(context, image is not None)
            items.append((prompt, self.continuation_ids(prompt, image is not None, context, continuation), image))
        results = []
        bar = tqdm(total=len(items), desc="genllava scoring", disable=self.rank != 0)
        for start in range(0, len(items), self.batch_size):
            results += self._score(items[start:start + self.batch_size])
            bar.update(len(items[start:start + self.batch_size]))
        bar.close()
        return _as_evaluator_takes(results)

    def continuation_ids(self, prompt: list[int], has_image: bool, context: str, continuation: str) -> list[int]:
        """The continuation's tokens as the processor writes an answer after [I2T]: the training
        encoding of (question, answer) is the prompt, then the answer, then </s>."""
        from ..data.conversation import ASSISTANT, Message, user
        from ..data.templates import I2T

        text = context.replace("<image>", "").strip()
        answer = Message(ASSISTANT, continuation.strip(), task=I2T)
        encoded = self.processor.encode([user(text, has_image=has_image), answer]).input_ids
        if encoded[:len(prompt)] != prompt:
            raise ValueError("the prompt does not prefix the encoded answer; cannot score the continuation")
        body = encoded[len(prompt):]
        return body[:body.index(self.processor.eos_id)]

    def _score(self, items) -> list[tuple[float, bool]]:
        proc = self.processor
        sequences = [prompt + cont for prompt, cont, _ in items]
        ids, mask = proc.pad(sequences, left=False)
        embeds = self._embed(ids, [im for _, _, im in items])
        logits = self.model.language_model(inputs_embeds=embeds, attention_mask=mask.to(self.device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        results = []
        for row, (prompt, cont, _) in enumerate(items):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cont), device=logprobs.device)
            target = torch.tensor(cont, device=logprobs.device)
            chosen = logprobs[row, positions].gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((logprobs[row, positions].argmax(-1) == target).all())
            results.append((-float(chosen.sum()), greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("genllava's lmms-eval plug-in answers single-round tasks only; multi-round tasks "
                                  "need the model's own history (use genllava.chat.ChatSession)")
