"""The real models behave: SmolLM2 knows Paris; Gemma-3's greedy text never contains image tokens.

Gemma-3-270M itself ranks ``<start_of_image>`` first after some sentences (its unembedding row for
it sits among the paragraph-break rows). Google's reference sampler never generates the image
tokens; the import writes them into ``generation_config.suppress_tokens``, which ``generate()``
and the engine's greedy decoding honour, and marks them special in the tokenizer."""
import pytest
import torch

from modules.engine.patchscope import generate_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_TOKENS = (255999, 256000)
SENTENCES = ["the capital of France is Paris.", "The cat sat on the mat.", "Alice is taller than Bob.",
             "The river flows to the sea.", "Paris is in France.", "All squares are rectangles."]


def test_smollm2_answers_paris(real_lm):
    model, tokenizer = real_lm("smollm2-135m")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    engine = generate_greedy(model, ids, 3).tokens[0]
    assert tokenizer.decode(engine).startswith(" Paris")
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1]:]
    assert torch.equal(hf, engine)


def test_gemma3_greedy_text_has_no_image_tokens(real_lm):
    model, tokenizer = real_lm("gemma3-270m")
    assert model.generation_config.suppress_tokens == list(IMAGE_TOKENS)
    assert tokenizer.convert_ids_to_tokens(list(IMAGE_TOKENS)) == ["<start_of_image>", "<end_of_image>"]
    ids = tokenizer(SENTENCES[0], return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    out = generate_greedy(model, ids, 3)
    assert out.logits[0, 0].argmax() == IMAGE_TOKENS[0]  # the model's own first choice (kept in raw logits)
    assert out.tokens[0, 0] == 108  # "\n\n", the next best, is what greedy decoding writes
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1]:]
    assert torch.equal(hf, out.tokens[0])
    for sentence in SENTENCES:
        ids = tokenizer(sentence, return_tensors="pt").input_ids
        tokens = generate_greedy(model, ids, 6).tokens[0].tolist()
        assert not set(tokens) & set(IMAGE_TOKENS), (sentence, tokenizer.decode(tokens))


def test_gemma3_image_tokens_are_special(real_lm):
    _, tokenizer = real_lm("gemma3-270m")
    assert {"<start_of_image>", "<end_of_image>"} <= set(tokenizer.all_special_tokens)
    assert tokenizer.decode([IMAGE_TOKENS[0], 107], skip_special_tokens=True) == "\n"
