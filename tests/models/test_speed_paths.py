"""The speed and memory options change no number: each keeps the fp32 output of the plain path (1e-5)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model

TINY = ["scale=tiny", "data=synthref", "tokenizer.vocab_size=64"]
MODELS = ["restr", "lavt", "sadlr", "m3dec_cnn", "m3dec_swin", "lgformer", "shared_ris"]


def batch_for(model: str, batch_size: int = 2) -> dict:
    from risbench.tasks.profile import dummy_batch
    from tests.helpers import compose_config

    cfg = compose_config([f"model={model}", *TINY])
    batch = dummy_batch(batch_size, int(cfg.data.img_size), int(cfg.tokenizer.max_length), 64)
    batch["attention_mask"][1, 3:] = 0  # padded text in the second sample
    batch["mask"][:, :, 4:20, 8:30] = 1.0
    return batch


def train_step(net, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net.train()
    out = net.mask_logits(net(batch))
    net.loss(net(batch), batch)["loss"].backward()
    return out.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model", MODELS)
def test_grad_checkpointing_changes_no_output_or_gradient(model):
    batch = batch_for(model)
    torch.manual_seed(0)
    plain = build_model(model, 64, TINY)
    torch.manual_seed(0)
    checkpointed = build_model(model, 64, [*TINY, "model.grad_checkpointing=true"])
    switched = [m for m in checkpointed.modules() if getattr(m, "grad_checkpointing", False)
                or getattr(m, "gradient_checkpointing", False)]
    assert switched, "no tower took the grad_checkpointing switch"
    out, grads = train_step(plain, batch)
    out_ckpt, grads_ckpt = train_step(checkpointed, batch)
    assert torch.allclose(out, out_ckpt, atol=1e-5)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-5), name


@pytest.mark.slow
def test_compiled_model_gives_the_eager_output():
    batch = batch_for("sadlr")
    torch.manual_seed(0)
    eager = build_model("sadlr", 64, TINY).eval()
    torch.manual_seed(0)
    compiled = build_model("sadlr", 64, [*TINY, "model.compile=true"]).eval()
    assert compiled._compiled_call_impl is not None
    assert set(compiled.state_dict()) == set(eager.state_dict())  # checkpoints keep their names
    with torch.no_grad():
        assert torch.allclose(eager.mask_logits(eager(batch)), compiled.mask_logits(compiled(batch)), atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_fused_attention_gives_the_explicit_output(model):
    """SDPA on every attention (timm's Swin windows included) computes what the explicit matmuls do."""
    from risbench.models.common.attention import explicit_attention

    batch = batch_for(model)
    torch.manual_seed(0)
    net = build_model(model, 64, TINY).eval()
    with torch.no_grad():
        fused = net.mask_logits(net(batch))
        with explicit_attention(net):
            explicit = net.mask_logits(net(batch))
    assert torch.allclose(fused, explicit, atol=1e-5)
