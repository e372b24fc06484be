"""Chunked CLIP prompt encoding: no truncation, start/end per chunk, equalised chunk counts."""

from __future__ import annotations

import pytest
import torch

from core.recipe.prompt_encoding import CLIP_CHUNK, encode_prompt_pair, prompt_chunks


@pytest.fixture(scope="module")
def tokenizer(tiny_paths):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny_paths["base"]), subfolder="tokenizer")


def test_200_token_prompt_becomes_three_full_chunks(tokenizer):
    prompt = "a" * 200  # one token per letter with the tiny character vocabulary
    tokens = tokenizer(prompt, truncation=False, add_special_tokens=False)["input_ids"]
    assert len(tokens) == 200
    chunks = prompt_chunks(tokenizer, prompt)
    assert len(chunks) == 3
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for i, chunk in enumerate(chunks):
        assert len(chunk) == tokenizer.model_max_length == CLIP_CHUNK + 2
        assert chunk[0] == bos
        body = tokens[i * CLIP_CHUNK : (i + 1) * CLIP_CHUNK]
        assert chunk[1 : 1 + len(body)] == body  # nothing dropped, nothing reordered
        assert all(t == eos for t in chunk[1 + len(body) :])  # end token, then end-token padding
    assert sum(len(tokens[i * CLIP_CHUNK : (i + 1) * CLIP_CHUNK]) for i in range(3)) == 200


def test_empty_prompt_still_gives_one_chunk(tokenizer):
    chunks = prompt_chunks(tokenizer, "")
    assert len(chunks) == 1 and chunks[0][0] == tokenizer.bos_token_id
    assert set(chunks[0][1:]) == {tokenizer.eos_token_id}


def test_pair_is_equalised_and_concatenated_on_tokens(fc_models):
    positive = "abcdefghij" * 16  # 160 tokens: 3 chunks with different content
    cond, uncond = encode_prompt_pair(fc_models.tokenizer, fc_models.text_encoder, positive, "bad", "cpu")
    assert cond.shape == uncond.shape == (1, 77 * 3, 32)
    # The single negative chunk is repeated to match the three positive chunks.
    assert torch.equal(uncond[:, :77], uncond[:, 77:154]) and torch.equal(uncond[:, :77], uncond[:, 154:])
    assert not torch.equal(cond[:, :77], cond[:, 77:154])


def test_longer_negative_repeats_the_positive(fc_models):
    cond, uncond = encode_prompt_pair(fc_models.tokenizer, fc_models.text_encoder, "cat", "c" * 100, "cpu")
    assert cond.shape == uncond.shape == (1, 77 * 2, 32)
    assert torch.equal(cond[:, :77], cond[:, 77:])
