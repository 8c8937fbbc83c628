"""The model trained and sampled through the Triton kernels equals the pure PyTorch path.

Without a GPU, Triton runs in its CPU interpreter (with one, compiled on it): the tiny preset
trains a few AdamW steps on random packed documents (attention, every RMSNorm and the loss go
through the dispatch layer), and greedy sampling with the KV cache exercises the
flash-decoding kernel.
"""

import torch

from anyseq.config import ModelConfig
from anyseq.kernels import linear_cross_entropy, use_backend
from anyseq.kernels.testing import documents, kernel_device
from anyseq.model import Transformer
from anyseq.sampling import SamplingOptions, sample
from anyseq.sequence import Serializer
from anyseq.vocab import TokenSpace

DEVICE = kernel_device()


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("tiny")).to(DEVICE)


def loss_curve(backend: str, steps: int = 3) -> list[float]:
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    document_ids = documents([[9, 1, 30], [40]]).to(DEVICE)  # a one-token document among packed ones
    tokens = torch.randint(0, 512, (2, 41), generator=data).to(DEVICE)  # one batch, memorised step by step
    targets = tokens[:, 1:].clone()
    targets[0, 8:10] = -100  # no target across a document boundary
    losses = []
    with use_backend(backend):
        for _ in range(steps):
            hidden = model(tokens[:, :-1], document_ids)
            ce, lse = linear_cross_entropy(hidden.reshape(-1, 64), model.output.weight, targets.reshape(-1))
            valid = targets.reshape(-1) != -100
            loss = ce.sum() / valid.sum() + 1e-4 * (lse[valid] ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_training_loss_curve_through_triton_equals_pytorch():
    torch_curve, triton_curve = loss_curve("torch"), loss_curve("triton")
    assert torch_curve[2] < torch_curve[1] < torch_curve[0]  # it trains
    assert torch.allclose(torch.tensor(triton_curve), torch.tensor(torch_curve), rtol=1e-5, atol=1e-6), (
        triton_curve, torch_curve)


def test_greedy_sampling_with_cache_through_triton_equals_pytorch():
    model = tiny_model().eval()
    space = TokenSpace(400)
    bos = space.special("<bos>")
    prompts = [[bos, 5, 6, 7], [bos, 9], [bos, 1, 2, 3, 4, 5, 6, 7, 8]]
    runs = {}
    for backend in ("torch", "triton"):
        constraints = [Serializer(space).grammar("text").constraint(max_tokens=10) for _ in prompts]
        with use_backend(backend):
            runs[backend] = sample(model, prompts, constraints, SamplingOptions(temperature=0),
                                   space.special("<pad>"), max_new_tokens=11)
    assert runs["triton"] == runs["torch"]
