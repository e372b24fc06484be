"""CLIP prompt encoding in 75-token chunks, as the official IC-Light demos do (no truncation)."""

from __future__ import annotations

import math

import torch

CLIP_CHUNK = 75  # prompt tokens per chunk, between the start and end tokens
CLIP_TOKENS = CLIP_CHUNK + 2  # a chunk as the text encoder takes it: CLIP's model_max_length


def prompt_chunks(tokenizer, text: str) -> list[list[int]]:
    """Token id chunks: [start] + up to CLIP_CHUNK tokens + [end], padded with the end token to CLIP_TOKENS."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokens = tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
    # An empty prompt still needs one chunk (start, end, padding) so the text encoder has input.
    pieces = [tokens[i : i + CLIP_CHUNK] for i in range(0, len(tokens), CLIP_CHUNK)] or [[]]
    chunks = [[start] + piece + [end] for piece in pieces]
    return [chunk + [end] * (CLIP_TOKENS - len(chunk)) for chunk in chunks]


@torch.inference_mode()
def encode_text(tokenizer, text_encoder, text: str, device: torch.device | str) -> torch.Tensor:
    """(chunks, CLIP_TOKENS, width) hidden states of the prompt."""
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
