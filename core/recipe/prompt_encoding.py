"""CLIP prompt encoding in 75-token chunks, as the official IC-Light demos do (no truncation)."""

from __future__ import annotations

import math

import torch

CLIP_CHUNK = 75  # tokens per chunk between the start and end tokens (model_max_length 77 - 2)


def prompt_chunks(tokenizer, text: str) -> list[list[int]]:
    """Token id chunks: [start] + up to 75 tokens + [end], padded with the end token to model_max_length."""
    max_length = tokenizer.model_max_length
    chunk_length = max_length - 2
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokens = tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
    # An empty prompt still needs one chunk (start, end, padding) so the text encoder has input.
    pieces = [tokens[i : i + chunk_length] for i in range(0, len(tokens), chunk_length)] or [[]]
    chunks = [[start] + piece + [end] for piece in pieces]
    return [chunk + [end] * (max_length - len(chunk)) for chunk in chunks]


@torch.inference_mode()
def encode_text(tokenizer, text_encoder, text: str, device: torch.device | str) -> torch.Tensor:
    """(chunks, 77, width) hidden states of the prompt."""
    ids = torch.tensor(prompt_chunks(tokenizer, text), dtype=torch.int64, device=device)
    return text_encoder(ids).last_hidden_state


@torch.inference_mode()
def encode_prompt_pair(
    tokenizer, text_encoder, positive: str, negative: str, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond), each (1, 77 * n, width): chunk counts equalised by repetition, concatenated on tokens."""
    cond = encode_text(tokenizer, text_encoder, positive, device)
    uncond = encode_text(tokenizer, text_encoder, negative, device)
    count = max(len(cond), len(uncond))
    cond = torch.cat([cond] * math.ceil(count / len(cond)), dim=0)[:count]
    uncond = torch.cat([uncond] * math.ceil(count / len(uncond)), dim=0)[:count]
    return torch.cat(list(cond), dim=0)[None], torch.cat(list(uncond), dim=0)[None]
