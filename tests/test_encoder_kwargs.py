"""FlauBERT without its per-forward KV cache: same outputs and gradients, other encoders untouched."""
import torch
import transformers

from rakuten.models.encoder_kwargs import NO_KV_CACHE, encoder_kwargs


def _flaubert():
    cfg = transformers.FlaubertConfig(vocab_size=300, emb_dim=32, n_layers=2, n_heads=4, pad_index=2,
                                      pad_token_id=2)
    return transformers.AutoModel.from_config(cfg, attn_implementation="eager")


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    ids[1, 7:], mask[1, 7:] = 2, 0  # a padded row
    return ids, mask


def test_flaubert_gets_the_no_cache_and_computes_the_same_function():
    m = _flaubert()
    assert encoder_kwargs(m) == {"cache": NO_KV_CACHE}
    ids, mask = _batch()
    m.eval()
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state
        out = m(input_ids=ids, attention_mask=mask, cache=NO_KV_CACHE).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    m.train()
    grads = []
    for kw in ({}, {"cache": NO_KV_CACHE}):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same dropout masks
        m(input_ids=ids, attention_mask=mask, **kw).last_hidden_state.square().mean().backward()
        grads.append(m.embeddings.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


def test_other_encoders_get_no_extra_arguments():
    cfg = transformers.CamembertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64)
    assert encoder_kwargs(transformers.AutoModel.from_config(cfg)) == {}
    assert encoder_kwargs(torch.nn.Linear(2, 2)) == {}
    assert NO_KV_CACHE.get_seq_length() == 0 and NO_KV_CACHE[3] is NO_KV_CACHE
    k, v = torch.ones(1), torch.zeros(1)
    assert NO_KV_CACHE.update(k, v, 0) == (k, v)
