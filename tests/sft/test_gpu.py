"""GPU-only checks (marker `gpu`: deselected by default; run by bench/gpu_session.sh on a
device machine). Not part of the CPU test count."""

import pytest
import torch

from sft.train import prepare, train_and_save
from synth.plan import load_plan

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device (run them with -m gpu on a GPU machine)"


def test_flex_attention_packs_and_trains_in_bf16(tmp_path, tiny_model):
    from test_train import sft_recipe

    path = sft_recipe(tmp_path, tiny_model, attn_implementation="flex_attention", max_steps=30, batch_size=8)
    p = prepare(load_plan(path), progress=False)
    assert p.packing and p.attn == "flex_attention" and p.on_gpu
    metrics = train_and_save(p)
    assert metrics["last_loss"] < metrics["first_loss"] - 0.3


def test_flex_packed_row_gives_each_example_its_own_gradients(tiny_model):
    """The backward pass too (FlexAttention has none on CPU): a packed row's loss and grads
    equal the sum over the examples run alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="flex_attention").cuda()
    a, b = torch.randint(10, 500, (1, 40)).cuda(), torch.randint(10, 500, (1, 56)).cuda()
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(40), torch.arange(56)])[None].cuda()
    labels = packed.clone()
    labels[0, 40] = -100  # the first token of b is not predicted from a

    model.zero_grad()
    out = model(input_ids=packed, position_ids=positions, labels=labels, use_cache=False)
    (out.loss * 94).backward()  # 94 predicted tokens: a sum, comparable with the alone runs
    packed_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    for x in (a, b):
        o = model(input_ids=x, labels=x, use_cache=False)
        (o.loss * (x.shape[1] - 1)).backward()
    for g_packed, p in zip(packed_grads, model.parameters(), strict=True):
        assert torch.allclose(g_packed, p.grad, atol=1e-4, rtol=1e-3)


def test_topk_kl_on_bf16_cuda_logits_matches_float32_on_cpu():
    """The KD loss takes the student's bf16 logits on the GPU (it upcasts them itself): loss
    and gradients agree with float32 on the CPU to bf16's precision."""
    from sft.distill import topk_kl

    torch.manual_seed(0)
    logits = (torch.randn(64, 4096) * 4).to(torch.bfloat16)
    teacher = torch.log_softmax(torch.randn(64, 4096) * 4, -1)
    logprobs, ids = teacher.topk(20, dim=-1)
    logprobs[:5, 10:] = float("-inf")  # positions with fewer than k teacher tokens
    results = []
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        x = logits.to(device=device, dtype=dtype).requires_grad_(True)
        loss = topk_kl(x, ids.to(device), logprobs.to(device), 2.0, True)
        loss.backward()
        results.append((float(loss), x.grad.float().cpu()))
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = results
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-2)
    assert torch.isfinite(gpu_grad).all()
    assert torch.allclose(gpu_grad, cpu_grad, atol=1e-6, rtol=2e-2)
