"""ClassifierCNN matches REFERENCE.md: layer sizes, F, parameter counts, head and init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from earlyad.train.model import ClassifierCNN, ModelConfig, count_parameters


def _shapes(model: ClassifierCNN, size: int = 96) -> list[int]:
    x = torch.zeros(1, 1, size, size, size)
    sizes = [size]
    for block in model.features:
        for layer in block:
            x = layer(x)
            if isinstance(layer, nn.Conv3d | nn.MaxPool3d):
                sizes.append(x.shape[-1])
    return sizes


def test_paper_model_sizes_features_and_parameters():
    model = ClassifierCNN(ModelConfig(width=1.0))
    assert _shapes(model) == [96, 96, 47, 43, 21, 17, 8, 6, 1]
    assert model.n_features == 512
    n = count_parameters(model)
    assert 24.5e6 < n < 24.9e6, n  # "about 24.7 M parameters"


def test_liu2022_variant_has_64000_features():
    model = ClassifierCNN(ModelConfig(variant="liu2022"))
    assert model.n_features == 64000
    assert 89.5e6 < count_parameters(model) < 89.9e6  # "about 89.7 M parameters"


def test_head_relu_switch():
    paper = ClassifierCNN(ModelConfig(width=0.125))
    public = ClassifierCNN(ModelConfig(width=0.125, head_relu=False))
    relus = [m for m in paper.classifier if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 and isinstance(paper.classifier[3], nn.ReLU)
    assert not any(isinstance(m, nn.ReLU) for m in public.classifier)


@pytest.mark.parametrize(
    ("norm", "cls"), [("instance", nn.InstanceNorm3d), ("batch", nn.BatchNorm3d)]
)
def test_norm_type(norm, cls):
    model = ClassifierCNN(ModelConfig(width=0.125, norm_type=norm))
    norms = [
        m for m in model.features.modules() if isinstance(m, nn.InstanceNorm3d | nn.BatchNorm3d)
    ]
    assert len(norms) == 4 and all(type(m) is cls for m in norms)
    if norm == "instance":
        assert not norms[0].affine


def test_linear_init_and_forward_shape():
    torch.manual_seed(0)
    model = ClassifierCNN(ModelConfig(width=0.125))
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            assert abs(float(m.weight.detach().std()) - 0.01) < 0.002
            assert float(m.bias.detach().abs().max()) == 0.0
    out = model(torch.randn(2, 1, 96, 96, 96))
    assert out.shape == (2, 3)
    assert model.n_features == 64  # 512 * 0.125


def test_too_small_input_is_refused():
    with pytest.raises((ValueError, RuntimeError)):
        ClassifierCNN(ModelConfig(width=0.125, input_size=20))


def test_pointwise_block1_equals_a_plain_convolution():
    torch.manual_seed(0)
    model = ClassifierCNN(ModelConfig(width=0.125))
    conv = model.features[0][0]
    plain = nn.Conv3d(1, conv.out_channels, kernel_size=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 20, 20, 20, requires_grad=True)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-6, atol=1e-6)
    assert set(model.state_dict()) >= {"features.0.0.weight", "features.0.0.bias"}
